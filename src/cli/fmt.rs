//! `roux fmt`: the canonical layout in place (`--check` to only report), and conversion between
//! the recipe and YAML forms (`--to yaml|roux`).

use std::path::{Path, PathBuf};

use crate::Form;
use roux::diag::render_text;
use roux::frontend::{is_yaml, parse_source, read};
use roux::syntax::{print, yaml};

/// The formatted text of a file in its own form, or the rendered syntax error.
fn formatted(path: &Path) -> Result<(String, String), (u8, String)> {
    let source = read(path).map_err(|e| (2, format!("error: {e}\n")))?;
    let name = path.display().to_string();
    let out = if is_yaml(path) {
        // (Reading refuses two keys that are one to roux, as `stage  rl` and `stage rl`, so its
        // AST holds no duplicate for the layout to merge.) Its comments are
        // carried onto the new layout.
        parse_source(&source).map(|ast| roux::syntax::yaml_comments::carry(&source.text, &yaml::to_yaml(&ast)))
    } else {
        print::format(&source.text)
    };
    out.map(|t| (source.text.clone(), t)).map_err(|d| (1, render_text(&name, &source.text, &d)))
}

pub fn run(files: &[PathBuf], check: bool, to: Option<Form>, output: Option<&Path>) -> u8 {
    if let Some(form) = to {
        let [file] = files else {
            eprintln!("error: --to converts one file at a time");
            return 2;
        };
        return convert(file, form, output);
    }
    let mut code = 0;
    for f in files {
        // A fmt killed mid-write left its temporary file; this one removes it, writing or not.
        if let Some(dir) = f.parent() {
            roux::fsio::remove_stale_tmp(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }, f.file_name());
        }
        match formatted(f) {
            Err((c, msg)) => {
                eprint!("{msg}");
                code = code.max(c);
            }
            Ok((before, after)) if before != after => {
                if check {
                    eprintln!("{}: not formatted (run `roux fmt {}`)", f.display(), f.display());
                    code = code.max(1);
                } else if let Err(e) = roux::fsio::write_atomic(f, after.as_bytes()) {
                    eprintln!("error: {e}");
                    code = 2;
                } else {
                    eprintln!("{}: formatted", f.display());
                }
            }
            Ok(_) => {}
        }
    }
    code
}

fn convert(file: &Path, form: Form, output: Option<&Path>) -> u8 {
    let source = match read(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let ast = match parse_source(&source) {
        Ok(a) => a,
        Err(d) => {
            eprint!("{}", render_text(&file.display().to_string(), &source.text, &d));
            return 1;
        }
    };
    if let (Form::Yaml, Some(d)) = (form, yaml::duplicate_key(&ast)) {
        eprint!("{}", render_text(&file.display().to_string(), &source.text, &d));
        return 1;
    }
    let text = match form {
        Form::Yaml => yaml::to_yaml(&ast),
        Form::Roux => print::print(&ast),
    };
    if source.text.contains("//") || source.text.contains("/*") || (is_yaml(file) && source.text.contains('#')) {
        eprintln!("note: comments do not carry over between the forms; {} keeps them", file.display());
    }
    match output {
        Some(o) => match roux::fsio::write_atomic(o, text.as_bytes()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        None => {
            out!("{text}");
            0
        }
    }
}
