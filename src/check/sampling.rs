//! `train`'s samples as it learns (as llm.c and nanoGPT-style loops print them):
//! `sample_every = N` (none), `sample_prompt` ("\n": what every sample continues, 1 to 4,096
//! bytes), `sample_tokens` (64, at most 4,096) and `sample_temperature` (0.8, as nanoGPT's
//! sample.py; 0 is greedy). E0264 for the others without `sample_every`.

use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::TrainSamples;
use crate::syntax::ast::ExprKind;

const KEYS: [&str; 3] = ["sample_prompt", "sample_tokens", "sample_temperature"];

impl<'a> Checker<'a> {
    pub(super) fn sampling_keys(&mut self, f: &mut Fields<'a>) -> Option<Option<TrainSamples>> {
        let every = f.optional(self, "sample_every", |f, ck| f.int(ck, "sample_every", None, Min::One))?;
        let prompt = match f.field("sample_prompt") {
            None => Some("\n".to_string()),
            Some(field) => match &field.value.kind {
                ExprKind::Str(s) if (1..=4096).contains(&s.len()) => Some(s.clone()),
                ExprKind::Str(_) => {
                    self.error(Diagnostic::error(Code::E0202, field.value.span, "`sample_prompt` is out of range").with_hint("a sample continues 1 to 4,096 bytes of text: `sample_prompt = \"ROMEO:\"`"));
                    None
                }
                _ => {
                    self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`sample_prompt` expects a string, found {}", super::eval::describe(&field.value))).with_hint("write `sample_prompt = \"ROMEO:\"`"));
                    None
                }
            },
        };
        let tokens = f.int(self, "sample_tokens", Some(64), Min::One);
        if tokens.is_some_and(|t| t > 4096) {
            self.error(Diagnostic::error(Code::E0202, f.value_span("sample_tokens"), "`sample_tokens` is out of range").with_hint("sample_tokens must lie in [1, 4096]"));
        }
        let temperature = f.ranged(self, "sample_temperature", Some(0.8), 0.0, false, 100.0, false);
        let Some(every) = every else {
            let given: Vec<&str> = KEYS.into_iter().filter(|k| f.field(k).is_some()).collect();
            for key in given {
                self.error(Diagnostic::error(Code::E0264, f.key_span(key), format!("`{key}` has no meaning without `sample_every`")).with_hint("add `sample_every = 500` to sample text as the stage trains, or leave the key out"));
            }
            return Some(None);
        };
        Some(Some(TrainSamples { every, prompt: prompt?, tokens: tokens.filter(|&t| t <= 4096)? as usize, temperature: temperature? }))
    }
}
