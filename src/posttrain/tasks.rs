//! Synthetic instruction tasks with a programmatic gold reward, so post-training runs offline
//! and is scored exactly. The gold reward stands in for human raters when labelling preferences.

use crate::recipe::Task;
use crate::rng::Rng;

/// Letters the string tasks draw from.
const ALPHABET: &[u8] = b"abcdefgh";
/// What a verbose answer appends: the dispreferred habit that preference training removes.
pub const FILLER: &str = " ok";
/// Gold-reward penalty per character after the answer (brevity), capped at `MAX_PENALTY`.
pub const PENALTY_PER_CHAR: f64 = 0.1;
pub const MAX_PENALTY: f64 = 0.5;

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Reverse => "reverse",
            Task::Sort => "sort",
            Task::Add => "add",
            Task::Uppercase => "uppercase",
        }
    }

    pub const ALL: [Task; 4] = [Task::Reverse, Task::Sort, Task::Add, Task::Uppercase];

    /// The longest prompt `instance` can write with strings of at most `max_len` letters, in bytes.
    pub fn longest_prompt(self, max_len: usize) -> usize {
        match self {
            Task::Reverse => "reverse ".len() + max_len.max(2),
            Task::Sort => "sort ".len() + max_len.max(2),
            Task::Uppercase => "upper ".len() + max_len.max(2),
            Task::Add => "add 49+49".len(),
        }
    }

    /// A random instance: (prompt, the correct answer). Strings have 2..=max_len letters.
    pub fn instance(self, rng: &mut Rng, max_len: usize) -> (String, String) {
        let word = |rng: &mut Rng| -> String {
            let n = 2 + rng.below((max_len.max(2) - 1) as u64) as usize;
            (0..n).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char).collect()
        };
        match self {
            Task::Reverse => {
                let w = word(rng);
                (format!("reverse {w}"), w.chars().rev().collect())
            }
            Task::Sort => {
                let w = word(rng);
                let mut c: Vec<char> = w.chars().collect();
                c.sort();
                (format!("sort {w}"), c.into_iter().collect())
            }
            Task::Add => {
                let (a, b) = (rng.below(50), rng.below(50));
                (format!("add {a}+{b}"), (a + b).to_string())
            }
            Task::Uppercase => {
                let w = word(rng);
                (format!("upper {w}"), w.to_uppercase())
            }
        }
    }
}

/// The correct answer to a synthetic prompt, or None when the prompt is not one of ours.
pub fn answer(prompt: &str) -> Option<String> {
    let (op, arg) = prompt.split_once(' ')?;
    Some(match op {
        "reverse" => arg.chars().rev().collect(),
        "sort" => {
            let mut c: Vec<char> = arg.chars().collect();
            c.sort();
            c.into_iter().collect()
        }
        "add" => {
            let (a, b) = arg.split_once('+')?;
            (a.parse::<u64>().ok()? + b.parse::<u64>().ok()?).to_string()
        }
        "upper" => arg.to_uppercase(),
        _ => return None,
    })
}

/// Gold reward of `response` for a prompt whose answer is `gold`, in [−0.5, 1]:
/// correctness (the share of the answer's characters in place) minus a brevity penalty of 0.1
/// per character beyond the answer's length, at most 0.5. Exactly right and nothing more → 1.
pub fn gold_reward(gold: &str, response: &str) -> f64 {
    let (g, r) = (gold.as_bytes(), response.as_bytes());
    if g.is_empty() {
        return 0.0;
    }
    let hits = g.iter().zip(r).filter(|(a, b)| a == b).count();
    let extra = r.len().saturating_sub(g.len());
    hits as f64 / g.len() as f64 - (extra as f64 * PENALTY_PER_CHAR).min(MAX_PENALTY)
}

/// The preferred behaviour: the exact answer and nothing after it.
pub fn exact(gold: &str, response: &str) -> bool {
    gold == response
}

/// A plausible wrong answer: the answer to another instance of the same task, different
/// from the correct one.
pub fn wrong_answer(task: Task, rng: &mut Rng, max_len: usize, gold: &str) -> String {
    loop {
        let (_, a) = task.instance(rng, max_len);
        if a != gold {
            return a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_hand() {
        assert_eq!(answer("reverse abcd").as_deref(), Some("dcba"));
        assert_eq!(answer("sort dbca").as_deref(), Some("abcd"));
        assert_eq!(answer("add 12+7").as_deref(), Some("19"));
        assert_eq!(answer("upper abc").as_deref(), Some("ABC"));
        assert_eq!(answer("dance abc"), None);
        let mut rng = Rng(5);
        for t in Task::ALL {
            for _ in 0..50 {
                let (p, a) = t.instance(&mut rng, 5);
                assert_eq!(answer(&p), Some(a), "{p}");
            }
        }
    }

    #[test]
    fn gold_reward_by_hand() {
        assert_eq!(gold_reward("dcba", "dcba"), 1.0);
        // Correct but verbose: 3 extra characters → 1 − 0.3.
        assert!((gold_reward("dcba", "dcba ok") - 0.7).abs() < 1e-12);
        // Two of four characters in place: 0.5. Shorter responses are not penalised.
        assert!((gold_reward("dcba", "dcxx") - 0.5).abs() < 1e-12);
        assert!((gold_reward("dcba", "d") - 0.25).abs() < 1e-12);
        // A long wrong answer: 0 − min(0.1 × 8, 0.5).
        assert!((gold_reward("ab", "xxxxxxxxxx") + 0.5).abs() < 1e-12);
    }
}
