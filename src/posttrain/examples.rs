//! Instruction examples, preference pairs and unpaired feedback: generated (synthetic tasks) or read from JSONL,
//! split into training and held-out sets, rendered through the recipe's prompt template into
//! byte sequences with per-token loss weights.

use std::collections::HashSet;

use super::chat;
use super::tasks::{self, FILLER};
use crate::recipe::{ExampleKind, ExampleSet, ExampleSource};
use crate::rng::Rng;

/// The largest JSONL file of examples read (the whole file is held in memory).
pub const MAX_JSONL_BYTES: u64 = 2 << 30;

#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub response: String,
    /// The correct answer when known (synthetic tasks): scores generations by gold reward.
    pub gold: Option<String>,
    /// A conversation's segments (text, trained): every assistant turn weighs in SFT, not only
    /// the last (`response`). Empty for single-turn examples.
    pub turns: Vec<(String, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub gold: Option<String>,
    /// How much more the chosen response is preferred (the data's `margin`; 0 without one): a
    /// reward model learns r_chosen − r_rejected ≥ it (Llama 2's margin loss, TRL's).
    pub margin: f64,
}

/// One completion of a prompt judged on its own, desirable or not (KTO's unpaired feedback).
#[derive(Clone, Debug, PartialEq)]
pub struct Feedback {
    pub prompt: String,
    pub completion: String,
    pub desirable: bool,
    pub gold: Option<String>,
}

pub struct Split<T> {
    pub train: Vec<T>,
    pub held_out: Vec<T>,
}

/// Whether a prompt belongs to the held-out set: decided by a hash of the prompt alone, so
/// the same prompt is held out in every data set of a recipe (the reward model's held-out
/// pairs and the policies' held-out prompts never leak into training).
pub fn is_held_out(prompt: &str, fraction: f64) -> bool {
    let h = crate::rng::hash64(prompt.as_bytes());
    ((h % 1_000_000) as f64) < fraction * 1_000_000.0
}

fn split<T>(items: Vec<T>, prompt: impl Fn(&T) -> &str, fraction: f64) -> Split<T> {
    let (mut train, mut held_out) = (vec![], vec![]);
    for it in items {
        if is_held_out(prompt(&it), fraction) {
            held_out.push(it);
        } else {
            train.push(it);
        }
    }
    Split { train, held_out }
}

/// The instruction examples of a data set (for preference data: prompt and chosen response;
/// for feedback: each prompt with a desirable completion).
pub fn instructions(set: &ExampleSet, seed: u64) -> Result<Split<Example>, String> {
    let items = match (&set.source, set.kind) {
        (ExampleSource::Synthetic { tasks, count, verbose, max_len, .. }, ExampleKind::Instructions) => {
            let mut rng = Rng(seed ^ crate::rng::hash64(set.name.as_bytes()));
            let mut seen = HashSet::new();
            let mut out = vec![];
            // Distinct prompts; give up widening after many repeats (small task spaces).
            let mut tries = 0;
            while out.len() < *count && tries < count * 20 {
                tries += 1;
                let task = tasks[rng.below(tasks.len() as u64) as usize];
                let (prompt, answer) = task.instance(&mut rng, *max_len);
                if !seen.insert(prompt.clone()) {
                    continue;
                }
                let response = if rng.unit() < *verbose { format!("{answer}{FILLER}") } else { answer.clone() };
                out.push(Example { prompt, response, gold: Some(answer), turns: vec![] });
            }
            out
        }
        (_, ExampleKind::Preferences) => {
            let pairs = preferences(set, seed)?;
            pairs.train.into_iter().chain(pairs.held_out).map(|p| Example { prompt: p.prompt, response: p.chosen, gold: p.gold, turns: vec![] }).collect()
        }
        (_, ExampleKind::Feedback) => {
            let all = feedback(set, seed)?;
            all.train.into_iter().chain(all.held_out).filter(|f| f.desirable).map(|f| Example { prompt: f.prompt, response: f.completion, gold: f.gold, turns: vec![] }).collect()
        }
        (ExampleSource::Jsonl { .. }, ExampleKind::Instructions) => read_jsonl(set)?
            .into_iter()
            .map(|f| Example { gold: tasks::answer(&f[0]), prompt: f[0].clone(), response: f[1].clone(), turns: vec![] })
            .collect(),
        (ExampleSource::Choices { .. }, _) | (_, ExampleKind::Choices) => return Err(only_compared(set)),
        (ExampleSource::Chat { .. }, ExampleKind::Instructions) => chat_items(set, |row, r| {
            let turns = row.turns(r)?;
            let (prompt, response) = chat::last_turn(&turns);
            // Generations are scored against the last answer's text, not its markup.
            let gold = row.conversation().iter().rev().find(|m| m.role == "assistant").map(|m| m.content.clone());
            Ok(Example { prompt, response, gold, turns })
        })?,
    };
    Ok(split(items, |e| &e.prompt, set.held_out))
}

/// The preference pairs of a data set. Synthetic pairs are labelled by the gold reward: the
/// correct, concise answer against a verbose one, a wrong one or a wrong verbose one; or a
/// verbose correct answer against a wrong one.
pub fn preferences(set: &ExampleSet, seed: u64) -> Result<Split<Pair>, String> {
    let items = match &set.source {
        ExampleSource::Synthetic { tasks, count, max_len, .. } => {
            let mut rng = Rng(seed ^ crate::rng::hash64(set.name.as_bytes()));
            (0..*count)
                .map(|_| {
                    let task = tasks[rng.below(tasks.len() as u64) as usize];
                    let (prompt, gold) = task.instance(&mut rng, *max_len);
                    let wrong = tasks::wrong_answer(task, &mut rng, *max_len, &gold);
                    let verbose = format!("{gold}{FILLER}");
                    let (a, b) = match rng.below(4) {
                        0 => (gold.clone(), verbose),
                        1 => (gold.clone(), wrong),
                        2 => (gold.clone(), format!("{wrong}{FILLER}")),
                        _ => (verbose, wrong),
                    };
                    let (chosen, rejected) = if tasks::gold_reward(&gold, &a) >= tasks::gold_reward(&gold, &b) { (a, b) } else { (b, a) };
                    Pair { prompt, chosen, rejected, gold: Some(gold), margin: 0.0 }
                })
                .collect()
        }
        ExampleSource::Jsonl { .. } => read_jsonl(set)?
            .into_iter()
            .map(|f| Pair { gold: tasks::answer(&f[0]), prompt: f[0].clone(), chosen: f[1].clone(), rejected: f[2].clone(), margin: f.get(3).and_then(|m| m.parse().ok()).unwrap_or(0.0) })
            .collect(),
        ExampleSource::Choices { .. } => return Err(only_compared(set)),
        ExampleSource::Chat { .. } => chat_items(set, |row, r| row.pair_with_margin(r).map(|(prompt, chosen, rejected, margin)| Pair { prompt, chosen, rejected, gold: None, margin }))?,
    };
    Ok(split(items, |p| &p.prompt, set.held_out))
}

/// The unpaired feedback of a data set. Synthetic completions are the correct, concise answer
/// (desirable, a `desirable` share of them) or a verbose, a wrong or a wrong verbose one.
pub fn feedback(set: &ExampleSet, seed: u64) -> Result<Split<Feedback>, String> {
    let items = match &set.source {
        ExampleSource::Synthetic { tasks, count, max_len, desirable, .. } => {
            let mut rng = Rng(seed ^ crate::rng::hash64(set.name.as_bytes()));
            (0..*count)
                .map(|_| {
                    let task = tasks[rng.below(tasks.len() as u64) as usize];
                    let (prompt, gold) = task.instance(&mut rng, *max_len);
                    let good = rng.unit() < *desirable;
                    let completion = if good {
                        gold.clone()
                    } else {
                        let wrong = tasks::wrong_answer(task, &mut rng, *max_len, &gold);
                        match rng.below(3) {
                            0 => format!("{gold}{FILLER}"),
                            1 => wrong,
                            _ => format!("{wrong}{FILLER}"),
                        }
                    };
                    Feedback { prompt, completion, desirable: good, gold: Some(gold) }
                })
                .collect()
        }
        ExampleSource::Jsonl { .. } => read_jsonl(set)?
            .into_iter()
            .map(|f| Feedback { gold: tasks::answer(&f[0]), prompt: f[0].clone(), completion: f[1].clone(), desirable: f[2] == "true" })
            .collect(),
        ExampleSource::Choices { .. } => return Err(only_compared(set)),
        ExampleSource::Chat { .. } => chat_items(set, |row, r| row.judged(r).map(|(prompt, completion, desirable)| Feedback { prompt, completion, desirable, gold: None }))?,
    };
    Ok(split(items, |f| &f.prompt, set.held_out))
}

/// Why a multiple-choice set gives no examples to train on (`check` refuses it first).
fn only_compared(set: &ExampleSet) -> String {
    format!("data `{}` holds multiple-choice questions, which only `compare` evaluates", set.name)
}

/// The questions of a multiple-choice set; a bad line is an error naming `file:line`.
pub fn questions(set: &ExampleSet) -> Result<Vec<super::choices::Question>, String> {
    let ExampleSource::Choices { path, fields, .. } = &set.source else { return Err(format!("data `{}` holds no multiple-choice questions", set.name)) };
    let text = crate::fsio::read_text(path, MAX_JSONL_BYTES)?;
    let fields: [String; 3] = fields.clone().try_into().map_err(|_| format!("data `{}`: a multiple-choice set names three fields", set.name))?;
    let parsed = super::choices::parse(&text, &fields, 1);
    match parsed.bad.first() {
        Some((line, why)) => Err(format!("{}: {why}", at(set, *line))),
        None => Ok(parsed.questions),
    }
}

/// The renderer of a chat data set, its work bounded by the file's size as check bounds it.
fn renderer(set: &ExampleSet) -> Result<chat::Renderer, String> {
    let r = chat::Renderer::new(set.chat.as_ref().ok_or_else(|| format!("data `{}` holds conversations but has no chat template", set.name))?)?;
    if let ExampleSource::Chat { path, .. } = &set.source {
        r.limit_work(std::fs::metadata(path).map_or(0, |m| m.len() as usize));
    }
    Ok(r)
}

fn at(set: &ExampleSet, line: usize) -> String {
    match &set.source {
        ExampleSource::Chat { path, .. } | ExampleSource::Jsonl { path, .. } | ExampleSource::Choices { path, .. } => format!("{}:{line}", path.display()),
        ExampleSource::Synthetic { .. } => set.name.clone(),
    }
}

/// What `item` makes of each conversation of a chat data set, rendered; errors name `file:line`.
fn chat_items<T>(set: &ExampleSet, item: impl Fn(&super::rows::ChatRow, &chat::Renderer) -> Result<T, String>) -> Result<Vec<T>, String> {
    let r = renderer(set)?;
    chat_rows(set)?.into_iter().map(|(line, row)| item(&row, &r).map_err(|e| format!("{}: {e}", at(set, line)))).collect()
}

/// The conversations of a chat data set with their line numbers; errors name `file:line`.
fn chat_rows(set: &ExampleSet) -> Result<Vec<(usize, super::rows::ChatRow)>, String> {
    let ExampleSource::Chat { path, .. } = &set.source else { return Ok(vec![]) };
    let text = crate::fsio::read_text(path, MAX_JSONL_BYTES)?;
    let parsed = super::rows::parse_jsonl(&text, set.kind, 1);
    if let Some((line, why)) = parsed.bad.first() {
        return Err(format!("{}:{line}: {why}", path.display()));
    }
    if parsed.rows.is_empty() {
        return Err(format!("{}: no examples", path.display()));
    }
    Ok(parsed.rows)
}

/// The fields a JSONL data set names, line by line, as strings; errors name `file:line`.
fn read_jsonl(set: &ExampleSet) -> Result<Vec<Vec<String>>, String> {
    let ExampleSource::Jsonl { path, fields } = &set.source else { return Ok(vec![]) };
    let text = crate::fsio::read_text(path, MAX_JSONL_BYTES)?;
    let parsed = super::jsonl::parse_jsonl(&text, fields, set.kind, 1);
    if let Some((line, why)) = parsed.bad.first() {
        return Err(format!("{}:{line}: {why}", path.display()));
    }
    if parsed.rows.is_empty() {
        return Err(format!("{}: no examples", path.display()));
    }
    Ok(parsed.rows)
}

/// How many of a prompt's tokens PPO and GRPO keep: what a context of `context` positions leaves
/// beside `max_new` new tokens, at least one (longer prompts are cut on the left, as TRL's
/// `max_prompt_length` cuts them).
pub fn prompt_room(context: usize, max_new: usize) -> usize {
    context.saturating_sub(max_new).max(1)
}

/// The prompt as the model sees it: the template with `{prompt}` replaced.
pub fn render(template: &str, prompt: &str) -> String {
    template.replace("{prompt}", prompt)
}

/// One training sequence: prompt and response bytes, and the loss weight of each next-token
/// target (`weights[i]` weighs predicting `tokens[i + 1]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    pub tokens: Vec<i64>,
    pub weights: Vec<f32>,
    /// Tokens of the rendered prompt.
    pub prompt_len: usize,
}

/// `template(prompt) ++ response ++ end`, cut to `context + 1` tokens. With `mask_prompt`,
/// targets inside the prompt weigh exactly zero; response and end-marker targets weigh one.
/// (Bytes; the run's `Codec` makes the same of any tokenizer's ids through `sequence_of`.)
pub fn sequence(set: &ExampleSet, prompt: &str, response: &str, mask_prompt: bool, context: usize) -> Seq {
    let p: Vec<i64> = render(&set.template, prompt).bytes().map(i64::from).collect();
    let r: Vec<i64> = response.bytes().chain(set.end.bytes()).map(i64::from).collect();
    sequence_of(&p, &r, mask_prompt, context)
}

/// The sequence of prompt ids then response ids (its end marker included), cut to `context + 1`.
pub fn sequence_of(prompt: &[i64], response: &[i64], mask_prompt: bool, context: usize) -> Seq {
    let mut tokens: Vec<i64> = prompt.iter().chain(response).copied().collect();
    tokens.truncate(context + 1);
    let prompt_len = prompt.len().min(tokens.len());
    let weights = (0..tokens.len().saturating_sub(1)).map(|i| if i + 1 < prompt_len && mask_prompt { 0.0 } else { 1.0 }).collect();
    Seq { tokens, weights, prompt_len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Task;

    fn synth(kind: ExampleKind) -> ExampleSet {
        ExampleSet {
            name: "instr".into(),
            kind,
            source: ExampleSource::Synthetic { tasks: Task::ALL.to_vec(), count: 2000, verbose: 0.3, max_len: 5, desirable: 0.3 },
            template: "Q: {prompt}\nA: ".into(),
            end: "\n".into(),
            held_out: 0.1,
            tokenizer: None,
            chat: None,
        }
    }

    #[test]
    fn prompt_targets_weigh_zero() {
        let s = sequence(&synth(ExampleKind::Instructions), "add 1+2", "3", true, 64);
        // "Q: add 1+2\nA: " is 14 bytes; then "3" and "\n": 16 tokens, 15 targets.
        assert_eq!(s.prompt_len, 14);
        assert_eq!(s.tokens.len(), 16);
        assert_eq!(s.weights.len(), 15);
        // Targets 1..=13 are prompt bytes: weight exactly 0; targets 14 ("3") and 15 ("\n"): 1.
        assert!(s.weights[..13].iter().all(|&w| w == 0.0));
        assert_eq!(&s.weights[13..], &[1.0, 1.0]);
        let u = sequence(&synth(ExampleKind::Instructions), "add 1+2", "3", false, 64);
        assert!(u.weights.iter().all(|&w| w == 1.0));
    }

    #[test]
    fn held_out_prompts_never_train() {
        let set = synth(ExampleKind::Instructions);
        let s = instructions(&set, 7).unwrap();
        let train: HashSet<&str> = s.train.iter().map(|e| e.prompt.as_str()).collect();
        assert!(s.held_out.iter().all(|e| !train.contains(e.prompt.as_str())));
        let frac = s.held_out.len() as f64 / (s.train.len() + s.held_out.len()) as f64;
        assert!((0.07..0.13).contains(&frac), "{frac}");
        let verbose = s.train.iter().filter(|e| e.response.ends_with(FILLER)).count() as f64 / s.train.len() as f64;
        assert!((0.25..0.35).contains(&verbose), "{verbose}");
    }

    #[test]
    fn preference_pairs_prefer_higher_gold_reward() {
        let s = preferences(&synth(ExampleKind::Preferences), 7).unwrap();
        for p in s.train.iter().chain(&s.held_out) {
            let g = p.gold.as_deref().unwrap();
            assert!(tasks::gold_reward(g, &p.chosen) > tasks::gold_reward(g, &p.rejected), "{p:?}");
        }
    }

    #[test]
    fn feedback_is_desirable_exactly_when_it_is_the_concise_right_answer() {
        let s = feedback(&synth(ExampleKind::Feedback), 7).unwrap();
        let all: Vec<&Feedback> = s.train.iter().chain(&s.held_out).collect();
        for f in &all {
            let g = f.gold.as_deref().unwrap();
            assert_eq!(f.desirable, tasks::exact(g, &f.completion), "{f:?}");
        }
        let share = all.iter().filter(|f| f.desirable).count() as f64 / all.len() as f64;
        assert!((0.26..0.34).contains(&share), "{share}");
    }
}
