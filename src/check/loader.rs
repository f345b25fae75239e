//! The files a recipe names, as check sees them. Check asks a `Loader` (as typst's compiler asks
//! its `World`): the command line passes `FileSystem`, tests an in-memory one, so `check` itself
//! does no I/O and every file-system edge case (FIFOs, symlinks, huge files) lives in one place.

use std::path::{Path, PathBuf};

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A regular file of this many bytes.
    File(u64),
    /// A directory, a FIFO, a device: not something a recipe reads.
    Other,
    Missing,
}

pub trait Loader {
    /// `path` with every symbolic link and `..` resolved, if it exists.
    fn real_path(&self, path: &Path) -> Option<PathBuf>;
    /// Whether `dir` is a project's root: it holds `.git`, `Cargo.toml` or `roux.toml`.
    fn is_project_root(&self, dir: &Path) -> bool;
    /// What `path` names (following links).
    fn entry(&self, path: &Path) -> PathKind;
    /// The text of a regular file of at most `cap` bytes, or why not (for a person).
    fn read_text(&self, path: &Path, cap: u64) -> Result<String, String>;
    /// `path` made absolute (against the working directory), without touching it.
    fn absolute(&self, path: &Path) -> PathBuf;
    /// `len` bytes of a regular file from `offset` (a safetensors header), or why not.
    fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String>;
}

/// The real file system.
pub struct FileSystem;

impl Loader for FileSystem {
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    fn is_project_root(&self, dir: &Path) -> bool {
        [".git", "Cargo.toml", "roux.toml"].iter().any(|m| dir.join(m).exists())
    }

    fn entry(&self, path: &Path) -> PathKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => PathKind::File(m.len()),
            Ok(_) => PathKind::Other,
            Err(_) => PathKind::Missing,
        }
    }

    fn read_text(&self, path: &Path, cap: u64) -> Result<String, String> {
        crate::fsio::read_text(path, cap)
    }

    fn absolute(&self, path: &Path) -> PathBuf {
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    }

    fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        crate::fsio::read_range(path, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Files in memory under `/proj` (the project root); no file system.
    struct Memory(BTreeMap<PathBuf, Vec<u8>>);

    /// `..` resolved lexically (no links in memory).
    fn normal(path: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for c in path.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        out
    }

    impl Loader for Memory {
        fn real_path(&self, path: &Path) -> Option<PathBuf> {
            let p = normal(path);
            (self.0.contains_key(&p) || self.0.keys().any(|k| k.starts_with(&p))).then_some(p)
        }
        fn is_project_root(&self, dir: &Path) -> bool {
            dir == Path::new("/proj")
        }
        fn entry(&self, path: &Path) -> PathKind {
            self.0.get(&normal(path)).map_or(PathKind::Missing, |b| PathKind::File(b.len() as u64))
        }
        fn read_text(&self, path: &Path, _: u64) -> Result<String, String> {
            self.0.get(&normal(path)).map(|b| String::from_utf8_lossy(b).into_owned()).ok_or_else(|| "not found".into())
        }
        fn absolute(&self, path: &Path) -> PathBuf {
            path.to_path_buf()
        }
        fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
            let b = self.0.get(&normal(path)).ok_or("not found")?;
            b.get(offset as usize..(offset + len) as usize).map(<[u8]>::to_vec).ok_or_else(|| "too short".into())
        }
    }

    fn check(files: &[(&str, usize)], recipe: &str) -> crate::check::Checked {
        let mem = Memory(files.iter().map(|(p, n)| (PathBuf::from(p), vec![b'a'; *n])).collect());
        let ast = crate::syntax::parse(recipe).expect("parses");
        crate::check::check_with(&ast, Path::new("/proj/recipes"), &[], &[], &mem)
    }

    const RECIPE: &str = r#"experiment "mem" { data corpus = text("../data/corpus.txt") { context = 8, split = 0.9 } }"#;

    #[test]
    fn check_reads_data_sizes_through_the_loader() {
        // 1000 bytes: 900 training and 100 validation tokens, both longer than the context.
        let c = check(&[("/proj/data/corpus.txt", 1000)], RECIPE);
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>());
        assert_eq!(c.recipe.unwrap().data[0].path, PathBuf::from("/proj/recipes/../data/corpus.txt"));
        // 50 bytes split 45 / 5: the validation split is shorter than the context.
        let c = check(&[("/proj/data/corpus.txt", 50)], RECIPE);
        assert_eq!(c.diagnostics[0].code, "E0211");
        assert_eq!(c.diagnostics[0].message, "context 8 is not shorter than the data: `../data/corpus.txt` splits into 45 training and 5 validation tokens");
    }

    #[test]
    fn a_missing_or_outside_file_is_reported_from_the_loader_alone() {
        let c = check(&[], RECIPE);
        assert_eq!((c.diagnostics[0].code, c.diagnostics[0].message.as_str()), ("E0210", "data file `../data/corpus.txt` not found"));
        let outside = RECIPE.replace("../data/corpus.txt", "../../etc/corpus.txt");
        let c = check(&[("/etc/corpus.txt", 1000)], &outside);
        assert_eq!((c.diagnostics[0].code, c.diagnostics[0].message.as_str()), ("E0212", "`../../etc/corpus.txt` is outside the recipe's project (/proj)"));
    }
}
