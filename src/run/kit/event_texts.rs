//! What a run writes as text (`samples/`, `completions/`, `rollouts/`, `scores/`: their
//! `step-N` files) as TensorBoard texts, each under its folder's name at its step, so the Text
//! tab shows beside the curves what the model said (TRL users find it in their trackers'
//! tables). A sample is one string; a `.jsonl` file a table of its first lines. The same
//! function reads a file as it is written and when a resume rebuilds the event file from the
//! files kept on disk, so both give the same texts. At step 0 the stage's definition: its
//! recipe's source and what it resolved to (as Hugging Face's Trainer writes its arguments).

use std::collections::BTreeSet;
use std::path::Path;

use super::tensorboard::Text;

/// The folders shown, in the order a step's texts are written.
const FOLDERS: [&str; 4] = ["samples", "completions", "rollouts", "scores"];

/// The lines of a file a table shows (the file keeps them all).
const MAX_ROWS: usize = 64;

/// The largest file a resume reads back into the event file.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Columns in this order when a table has them; any others after, by name.
const LEADING: [&str; 14] =
    ["prompt", "answer", "completion", "greedy", "exact", "sampled", "sampled_exact", "sampled_gold", "chosen", "rejected", "chosen_score", "rejected_score", "right", "reward"];

/// The step and text of `folder/file` holding `content`; None for a file that is not a step's.
pub fn of(folder: &str, file: &str, content: &str) -> Option<(u64, Text)> {
    let (step, ext) = step_of(folder, file)?;
    match ext {
        "txt" => Some((step, Text::One(code(content)))),
        "jsonl" => Some((step, table(content))),
        _ => None,
    }
}

/// The stage's definition at step 0: `recipe.roux` and `resolved.json` in `dir`, each as written.
pub fn definition(dir: &Path) -> Vec<(u64, String, Text)> {
    [("recipe", "recipe.roux"), ("resolved", "resolved.json")]
        .into_iter()
        .filter_map(|(tag, file)| match crate::fsio::read_text(&dir.join(file), MAX_FILE_BYTES) {
            Ok(text) => Some((0, tag.to_string(), Text::One(code(&text)))),
            Err(e) => {
                tracing::warn!("TensorBoard leaves out {file}: {e}");
                None
            }
        })
        .collect()
}

/// The texts of `dir`'s files up to step `through` (what a resume keeps), by step.
pub fn kept(dir: &Path, through: u64) -> Vec<(u64, String, Text)> {
    let mut out = vec![];
    for folder in FOLDERS {
        let Ok(entries) = std::fs::read_dir(dir.join(folder)) else { continue };
        let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        for name in names {
            // (Not a stray temporary file of an interrupted write, nor a step past the resume.)
            if !step_of(folder, &name).is_some_and(|(s, ext)| s <= through && matches!(ext, "txt" | "jsonl")) {
                continue;
            }
            let path = dir.join(folder).join(&name);
            match crate::fsio::read_text(&path, MAX_FILE_BYTES) {
                Ok(content) => out.extend(of(folder, &name, &content).map(|(s, t)| (s, folder.to_string(), t))),
                Err(e) => tracing::warn!("TensorBoard leaves out {}: {e}", path.display()),
            }
        }
    }
    // Stable: a step's texts stay in the folders' order.
    out.sort_by_key(|t| t.0);
    out
}

/// `step-N.EXT` in a shown folder: (N, EXT).
fn step_of<'a>(folder: &str, file: &'a str) -> Option<(u64, &'a str)> {
    let (n, ext) = file.strip_prefix("step-")?.split_once('.')?;
    (FOLDERS.contains(&folder) && n.bytes().all(|b| b.is_ascii_digit())).then_some((n.parse().ok()?, ext))
}

/// A table of a `.jsonl` file's first lines: a column per key any of them has.
fn table(content: &str) -> Text {
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        content.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.as_object().cloned()).take(MAX_ROWS).collect();
    let keys: BTreeSet<&str> = rows.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
    let header: Vec<&str> = LEADING.iter().copied().filter(|k| keys.contains(k)).chain(keys.iter().copied().filter(|k| !LEADING.contains(k))).collect();
    let mut out = vec![header.iter().map(|k| k.to_string()).collect::<Vec<_>>()];
    out.extend(rows.iter().map(|r| header.iter().map(|k| r.get(*k).map_or(String::new(), cell)).collect()));
    Text::Table(out)
}

/// A cell: numbers and truth values as written; text (and lists of reward terms) as code.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.to_string(),
        serde_json::Value::String(s) => code(s),
        _ => code(&v.to_string()),
    }
}

/// `s` as a Markdown code block (every line indented four spaces), which TensorBoard shows as
/// written: a model's `<eos>`, `*`, `#` or `|` are not read as HTML or Markdown.
fn code(s: &str) -> String {
    s.split('\n').map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_become_texts_and_others_do_not() {
        assert_eq!(of("samples", "step-20.txt", "a <b>\n# c"), Some((20, Text::One("    a <b>\n    # c".into()))));
        assert_eq!(of("samples", "step-x.txt", "a"), None);
        assert_eq!(of("completions", "base.jsonl", "{}"), None, "a compare's policy files have no step");
        assert_eq!(of("notes", "step-1.txt", "a"), None);
        let (step, t) = of("rollouts", "step-3.jsonl", "{\"reward\":0.5,\"prompt\":\"p|q\",\"z\":[1]}\n{\"prompt\":\"r\",\"extra\":null}\nnot json\n").unwrap();
        assert_eq!(step, 3);
        let want = [["prompt", "reward", "extra", "z"], ["    p|q", "0.5", "", "    [1]"], ["    r", "", "", ""]];
        assert_eq!(t, Text::Table(want.iter().map(|r| r.iter().map(|c| c.to_string()).collect()).collect()));
    }
}
