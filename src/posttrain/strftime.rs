//! `strftime_now` for chat templates (Llama 3.1's "Today Date", Mistral Small's "The current date
//! is"): transformers formats the clock's date; roux formats the recipe's `date = "YYYY-MM-DD"`
//! at midnight, so that check, every run and a resumed run render the same text. Python's
//! `strftime` directives (the C locale), with glibc's `-` flag for no padding.

/// A calendar day.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Day {
    y: i64,
    m: u32,
    d: u32,
}

const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
/// From Monday, as Python's `weekday()`.
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_days(y: i64, m: u32) -> u32 {
    [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1]
}

impl Day {
    /// `YYYY-MM-DD`, a day of years 1 to 9999 (Python's `date` range).
    pub fn parse(s: &str) -> Option<Day> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !s.chars().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit()) {
            return None;
        }
        let (y, m, d) = (s[..4].parse().ok()?, s[5..7].parse().ok()?, s[8..].parse().ok()?);
        (y >= 1 && (1..=12).contains(&m) && d >= 1 && d <= month_days(y, m)).then_some(Day { y, m, d })
    }

    /// Day of the year, from 1.
    fn yday(&self) -> u32 {
        (1..self.m).map(|m| month_days(self.y, m)).sum::<u32>() + self.d
    }

    /// Monday 0 … Sunday 6.
    fn weekday(&self) -> usize {
        // Days since 0001-01-01, a Monday (proleptic Gregorian, as Python's `date`).
        let y = self.y - 1;
        let days = y * 365 + y / 4 - y / 100 + y / 400 + self.yday() as i64 - 1;
        days.rem_euclid(7) as usize
    }

    /// `fmt` with this day at 00:00:00 in place of each directive.
    pub fn format(&self, fmt: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut next = chars.next();
            let pad = next != Some('-');
            if !pad {
                next = chars.next();
            }
            let num = |n: i64, width: usize| if pad { format!("{n:0width$}") } else { n.to_string() };
            let wd = self.weekday();
            let piece = match next {
                Some('Y') => num(self.y, 4),
                Some('y') => num(self.y % 100, 2),
                Some('m') => num(self.m as i64, 2),
                Some('d') => num(self.d as i64, 2),
                Some('e') => format!("{:>2}", self.d),
                Some('j') => num(self.yday() as i64, 3),
                Some('H' | 'M' | 'S') => num(0, 2),
                Some('I') => num(12, 2),
                Some('p') => "AM".into(),
                Some('f') => "000000".into(),
                Some('z' | 'Z') => String::new(),
                Some('b' | 'h') => MONTHS[self.m as usize - 1][..3].into(),
                Some('B') => MONTHS[self.m as usize - 1].into(),
                Some('a') => WEEKDAYS[wd][..3].into(),
                Some('A') => WEEKDAYS[wd].into(),
                Some('w') => ((wd + 1) % 7).to_string(),
                Some('u') => (wd + 1).to_string(),
                Some('F') => format!("{:04}-{:02}-{:02}", self.y, self.m, self.d),
                Some('D' | 'x') => format!("{:02}/{:02}/{:02}", self.m, self.d, self.y % 100),
                Some('T' | 'X') => "00:00:00".into(),
                Some('c') => format!("{} {} {:>2} 00:00:00 {}", &WEEKDAYS[wd][..3], &MONTHS[self.m as usize - 1][..3], self.d, self.y),
                Some('%') => "%".into(),
                Some('n') => "\n".into(),
                Some('t') => "\t".into(),
                Some(other) => return Err(format!("strftime_now: `%{other}` is not a directive roux formats (dates: %Y %y %m %d %e %j %b %B %a %A %w %u %F %D %x %c; the time is 00:00:00)")),
                None => return Err("strftime_now: a format ends in `%`".into()),
            };
            out.push_str(&piece);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Day;

    #[test]
    fn days_format_as_pythons_strftime_formats_them() {
        // Values from Python: date(2024, 7, 26).strftime(...) and date(2000, 2, 29).
        let d = Day::parse("2024-07-26").unwrap();
        assert_eq!(d.format("%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(d.format("%A, %B %-d, %Y (%a %w %u, day %j)").unwrap(), "Friday, July 26, 2024 (Fri 5 5, day 208)");
        assert_eq!(d.format("%c|%x|%X|%F|%e|%y|%%").unwrap(), "Fri Jul 26 00:00:00 2024|07/26/24|00:00:00|2024-07-26|26|24|%");
        let leap = Day::parse("2000-02-29").unwrap();
        assert_eq!(leap.format("%a %j %-m/%-d %e").unwrap(), "Tue 060 2/29 29");
        assert_eq!(Day::parse("0001-01-01").unwrap().format("%A").unwrap(), "Monday");
        for bad in ["2023-02-29", "2024-13-01", "2024-00-10", "0000-01-01", "24-07-26", "2024/07/26", "2024-07-26 ", "+024-07-26"] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
        assert!(d.format("%Q").unwrap_err().contains("`%Q` is not a directive"));
        assert!(d.format("50%").is_err());
    }
}
