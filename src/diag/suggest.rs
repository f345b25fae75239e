//! Did-you-mean: the closest name by edit distance, if it is close enough to be a typo.

pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate nearest to `name`, when within a third of its length (at least 1, at most 3 edits).
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = name.chars().count();
    let limit = (len / 3).clamp(1, 3);
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        // A length further off than the limit is further off in edits too: skip the distance.
        .filter(|c| c.chars().count().abs_diff(len) <= limit)
        .map(|c| (levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_by_hand() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("d_model", "dmodel"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
    }

    #[test]
    fn suggests_only_near_names() {
        assert_eq!(did_you_mean("dmodel", ["d_model", "layers"]), Some("d_model"));
        assert_eq!(did_you_mean("lyaers", ["d_model", "layers"]), Some("layers"));
        assert_eq!(did_you_mean("xyz", ["d_model", "layers"]), None);
    }
}
