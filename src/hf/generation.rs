//! How `roux sample` and `roux chat` draw tokens: the command line's choices, and where it makes
//! none, the checkpoint's `generation_config.json` read as `transformers`' `generate` reads it
//! (greedy unless `do_sample`; its sampling defaults top_k 50, temperature 1). A model roux
//! started itself has no such file and samples at temperature 0.8.

use serde_json::Value;

/// The command line's choices; `None` is left to the checkpoint or roux's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Draw {
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
}

/// How each token is drawn, every choice made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decoding {
    /// 0 is greedy.
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: i64,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Keep the tokens whose probability is at least `min_p` times the most likely one's (0: all).
    pub min_p: f64,
    /// Logits of tokens already in the text: divided by this when positive, multiplied when
    /// negative (Keskar et al. 2019, as transformers applies it); 1 is none.
    pub repetition_penalty: f64,
}

impl Decoding {
    /// Temperature alone (0 is greedy): every token in the running.
    pub fn plain(temperature: f64) -> Self {
        Decoding { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 }
    }

    /// What a person reads: `greedy`, or `temperature 0.7, top-k 20, top-p 0.8`, and the penalty.
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if self.temperature == 0.0 {
            parts.push("greedy".to_string());
        } else {
            parts.push(format!("temperature {}", self.temperature));
            if self.top_k > 0 {
                parts.push(format!("top-k {}", self.top_k));
            }
            if self.top_p < 1.0 {
                parts.push(format!("top-p {}", self.top_p));
            }
            if self.min_p > 0.0 {
                parts.push(format!("min-p {}", self.min_p));
            }
        }
        if self.repetition_penalty != 1.0 {
            parts.push(format!("repetition penalty {}", self.repetition_penalty));
        }
        parts.join(", ")
    }
}

/// The choices of `draw`, the rest from `config` (a parsed generation_config.json; `None` when
/// the model has none). An error says which value is out of range and where it came from
/// (`file` names the configuration).
pub fn resolve(draw: &Draw, config: Option<&Value>, file: &str) -> Result<Decoding, String> {
    let from_file = |key: &str| config.and_then(|c| c.get(key)).filter(|v| !v.is_null());
    let number = |key: &str| -> Result<Option<f64>, String> {
        match from_file(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("{file}: `{key}` is {v}, not a number")),
        }
    };
    let base = match config {
        None => Decoding { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 },
        Some(_) => {
            let sampling = match from_file("do_sample") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| format!("{file}: `do_sample` is {v}, not true or false"))?,
            };
            let top_k = match from_file("top_k") {
                None => 50,
                Some(v) => v.as_i64().ok_or_else(|| format!("{file}: `top_k` is {v}, not a whole number"))?,
            };
            Decoding {
                temperature: if sampling { number("temperature")?.unwrap_or(1.0) } else { 0.0 },
                top_k,
                top_p: number("top_p")?.unwrap_or(1.0),
                min_p: number("min_p")?.unwrap_or(0.0),
                repetition_penalty: number("repetition_penalty")?.unwrap_or(1.0),
            }
        }
    };
    let d = Decoding {
        temperature: draw.temperature.unwrap_or(base.temperature),
        top_k: draw.top_k.unwrap_or(base.top_k),
        top_p: draw.top_p.unwrap_or(base.top_p),
        min_p: draw.min_p.unwrap_or(base.min_p),
        repetition_penalty: draw.repetition_penalty.unwrap_or(base.repetition_penalty),
    };
    // Where an out-of-range value came from: the flag, else the file.
    let whence = |flag: &str, set: bool| if set { format!("--{flag}") } else { format!("`{}` in {file}", flag.replace('-', "_")) };
    let checks = [
        (d.temperature >= 0.0 && d.temperature.is_finite(), "temperature", draw.temperature.is_some(), "a finite number ≥ 0"),
        (d.top_k >= 0, "top-k", draw.top_k.is_some(), "a whole number ≥ 0"),
        (d.top_p > 0.0 && d.top_p <= 1.0, "top-p", draw.top_p.is_some(), "in (0, 1]"),
        (d.min_p >= 0.0 && d.min_p <= 1.0, "min-p", draw.min_p.is_some(), "in [0, 1]"),
        // (A penalty near 0 or huge turns logits infinite: the sampler's probabilities would be NaN.)
        ((1e-3..=1e3).contains(&d.repetition_penalty), "repetition-penalty", draw.repetition_penalty.is_some(), "in [0.001, 1000]"),
    ];
    for (ok, flag, set, range) in checks {
        if !ok {
            return Err(format!("{} must be {range}", whence(flag, set)));
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_checkpoint_draws_as_transformers_and_flags_win() {
        let none = Draw::default();
        // No generation_config.json: roux's own default.
        assert_eq!(resolve(&none, None, "g").unwrap().describe(), "temperature 0.8");
        // A file without do_sample is greedy, as generate(); with it, transformers' top_k 50.
        assert_eq!(resolve(&none, Some(&json!({"eos_token_id": 2})), "g").unwrap().describe(), "greedy");
        let qwen = json!({"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05});
        assert_eq!(resolve(&none, Some(&qwen), "g").unwrap().describe(), "temperature 0.7, top-k 20, top-p 0.8, repetition penalty 1.05");
        assert_eq!(resolve(&none, Some(&json!({"do_sample": true})), "g").unwrap().describe(), "temperature 1, top-k 50");
        let flags = Draw { temperature: Some(0.0), repetition_penalty: Some(1.0), ..Draw::default() };
        assert_eq!(resolve(&flags, Some(&qwen), "g").unwrap().describe(), "greedy");
        let flags = Draw { min_p: Some(0.1), top_k: Some(0), ..Draw::default() };
        assert_eq!(resolve(&flags, Some(&qwen), "g").unwrap().describe(), "temperature 0.7, top-p 0.8, min-p 0.1, repetition penalty 1.05");
    }

    #[test]
    fn out_of_range_values_name_their_source() {
        let file = "ck/generation_config.json";
        let bad = |draw: Draw, config: Value| resolve(&draw, Some(&config), file).unwrap_err();
        assert_eq!(bad(Draw::default(), json!({"top_p": 0})), "`top_p` in ck/generation_config.json must be in (0, 1]");
        assert_eq!(bad(Draw::default(), json!({"repetition_penalty": -1})), "`repetition_penalty` in ck/generation_config.json must be in [0.001, 1000]");
        assert_eq!(bad(Draw { repetition_penalty: Some(1e-300), ..Draw::default() }, json!({})), "--repetition-penalty must be in [0.001, 1000]");
        assert_eq!(bad(Draw::default(), json!({"do_sample": "yes"})), "ck/generation_config.json: `do_sample` is \"yes\", not true or false");
        assert_eq!(bad(Draw::default(), json!({"top_k": 2.5})), "ck/generation_config.json: `top_k` is 2.5, not a whole number");
        assert_eq!(bad(Draw { min_p: Some(2.0), ..Draw::default() }, json!({})), "--min-p must be in [0, 1]");
        assert_eq!(bad(Draw { temperature: Some(f64::INFINITY), ..Draw::default() }, json!({})), "--temperature must be a finite number ≥ 0");
    }
}
