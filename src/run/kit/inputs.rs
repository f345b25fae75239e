//! The files a stage reads, as digests in its content hash (`hash.rs`): a text corpus, a JSONL
//! set, a chat template, an imported checkpoint's configs, tokenizer and weights. Edit one and
//! the stages that read it train again, and a run resumed across the edit is refused naming it,
//! rather than an output of the old file passing for one of the new.

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::files::fnv1a;
use crate::recipe::{ExampleSource, ModelSpec, Recipe};

/// Files up to this size are known by their contents; larger ones (weights, big corpora) by
/// size and modification time, which an edit changes (a copy too: that only trains again).
const HASHED: u64 = 64 << 20;

/// The files of a checkpoint directory besides its weights that a run reads.
const CHECKPOINT_FILES: &[&str] = &["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "model.safetensors.index.json"];

/// `path`'s digest: its contents' FNV-1a, or for a large file its size and modification time;
/// `absent` for a file that is not there (a run reading it fails, naming it).
pub fn digest(path: &Path) -> String {
    // Each file is read once a process: a pipeline's stages hash the same corpus.
    static SEEN: Mutex<Option<HashMap<(PathBuf, u64, u128), String>>> = Mutex::new(None);
    let Ok(meta) = std::fs::metadata(path) else { return "absent".to_string() };
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    if !meta.is_file() || meta.len() > HASHED {
        return format!("{} bytes, modified at {modified} ns", meta.len());
    }
    let key = (path.to_path_buf(), meta.len(), modified);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = seen.get_or_insert_with(HashMap::new).get(&key) {
        return d.clone();
    }
    let d = crate::fsio::read_bytes(path, HASHED).map_or_else(|_| "unreadable".to_string(), |b| fnv1a(&b));
    seen.get_or_insert_with(HashMap::new).insert(key, d.clone());
    d
}

/// The digests of the files behind the declarations `mentions` names (a corpus, an example set
/// and the model whose tokenizer it uses, an imported model), by declaration and file name.
pub fn of(recipe: &Recipe, mentions: impl Fn(&str) -> bool) -> Value {
    let mut out = Map::new();
    // (A mix's own path is its first corpus's: its files are its corpora's, digested under theirs.)
    for d in recipe.data.iter().filter(|d| mentions(&d.name) && d.mix.is_empty()) {
        out.insert(d.name.clone(), [(name_of(&d.path), json!(digest(&d.path)))].into_iter().collect::<Map<_, _>>().into());
    }
    let mut models: Vec<&ModelSpec> = recipe.models.iter().filter(|m| mentions(&m.name)).collect();
    for set in recipe.examples.iter().filter(|s| mentions(&s.name)) {
        let files: Vec<&Path> = match &set.source {
            ExampleSource::Jsonl { path, .. } | ExampleSource::Choices { path, .. } => vec![path],
            ExampleSource::Chat { path, template, .. } => std::iter::once(path).chain(template).map(PathBuf::as_path).collect(),
            ExampleSource::Synthetic { .. } => vec![],
        };
        if !files.is_empty() {
            out.insert(set.name.clone(), files.iter().map(|f| (name_of(f), json!(digest(f)))).collect::<Map<_, _>>().into());
        }
        models.extend(set.tokenizer.as_deref().and_then(|m| recipe.model(m)));
    }
    for m in models {
        let Some(ck) = &m.checkpoint else { continue };
        let names = CHECKPOINT_FILES.iter().map(|s| s.to_string()).chain(ck.files.iter().cloned());
        out.insert(m.name.clone(), names.map(|f| (f.clone(), json!(digest(&ck.dir.join(&f))))).collect::<Map<_, _>>().into());
    }
    Value::Object(out)
}

fn name_of(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
