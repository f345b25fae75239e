//! `roux report RUN`: one self-contained HTML page of a run (no external files or scripts): its
//! plots inline, the plan of its model, its report, and the recipe and resolved definition it
//! ran. A script on the page checks that every plot has drawn and says so in the title, so a
//! headless browser can verify the page (tests/report.rs).

use std::path::Path;

/// Text for HTML, in an element or a quoted attribute.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A report value as people read it: whole numbers with thousands separators, other numbers to
/// four significant digits, durations and rates with their units, null as "-".
pub fn human(key: &str, v: &serde_json::Value) -> String {
    let Some(x) = v.as_f64() else {
        return match v {
            serde_json::Value::Null => "-".into(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    };
    let number = if (x.fract() == 0.0 && x.abs() < 1e15) || (1e3..1e6).contains(&x.abs()) {
        format!("{}{}", if x < 0.0 { "-" } else { "" }, crate::diag::thousands(x.abs().round() as u64))
    } else if x != 0.0 && (x.abs() >= 1e6 || x.abs() < 1e-3) {
        format!("{x:.3e}")
    } else {
        let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{x:.decimals$}")
    };
    match key {
        "wall_seconds" => format!("{number} s"),
        "tokens_per_s" => format!("{number} tokens/s"),
        "model_flops_per_s" => format!("{number} FLOP/s"),
        _ if key.ends_with("loss") => format!("{number} nats/token"),
        _ => number,
    }
}

/// The largest report, plot or resolved file a report page reads.
pub(crate) const MAX_FILE_BYTES: u64 = 64 << 20;

pub(crate) fn table(rows: &[(String, String)]) -> String {
    let body: String = rows.iter().map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v))).collect();
    format!("<table>{body}</table>")
}

/// The page for a run directory whose plots are already drawn.
pub fn report_html(dir: &Path, title: &str) -> Result<String, String> {
    let read = |f: &str| crate::fsio::read_text(&dir.join(f), MAX_FILE_BYTES).ok();
    let mut svgs: Vec<(String, String)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .filter_map(|e| Some((e.file_name().to_string_lossy().to_string(), crate::fsio::read_text(&e.path(), MAX_FILE_BYTES).ok()?)))
        .collect();
    svgs.sort();
    let mut sections = String::new();
    // Health warnings come first: what a person should look at before anything else.
    let mut warnings = String::new();
    if let Some(r) = read("report.json").and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
        let items: Vec<String> = r["warnings"].as_array().into_iter().flatten().filter_map(|w| w["message"].as_str()).map(|m| format!("<li>{}</li>", esc(m))).collect();
        if !items.is_empty() {
            warnings = format!("<h2 class=\"warnings\">Warnings</h2><ul class=\"warnings\">{}</ul>", items.concat());
        }
        // Numbers as people read them; the content hash is for roux, not for them.
        let rows: Vec<(String, String)> = r
            .as_object()
            .map(|o| o.iter().filter(|(k, v)| !v.is_object() && !v.is_array() && k.as_str() != "hash").map(|(k, v)| (k.replace('_', " "), human(k, v))).collect())
            .unwrap_or_default();
        sections.push_str(&format!("<h2>Result</h2>{}", table(&rows)));
        let policies: Vec<String> = r["rows"].as_array().into_iter().flatten().filter_map(|p| p["policy"].as_str().map(String::from)).collect();
        sections.push_str(&completions_section(dir, &policies));
        sections.push_str(&rollouts_section(dir));
        sections.push_str(&scores_section(dir));
        for (step, text) in super::completions::samples(dir) {
            sections.push_str(&format!("<h3>Sampled at step {step}</h3><pre>{}</pre>", esc(&text)));
        }
        for key in ["before", "after", "held_out_rewards"] {
            if let Some(o) = r[key].as_object() {
                let rows: Vec<(String, String)> = o.iter().filter(|(_, v)| v.is_number()).map(|(k, v)| (k.replace('_', " "), human(k, v))).collect();
                sections.push_str(&format!("<h3>{}</h3>{}", key.replace('_', " "), table(&rows)));
            }
        }
    }
    if let Some(t) = read("table.md") {
        sections.push_str(&format!("<h2>Policies</h2><pre>{}</pre>", esc(&t)));
    }
    let resolved: Option<serde_json::Value> = read("resolved.json").and_then(|t| serde_json::from_str(&t).ok());
    if let Some(spec) = resolved.as_ref().and_then(|v| crate::recipe::ModelSpec::from_run_json(&v["model"]).ok()) {
        let g = crate::lower::lower_model(&spec);
        let p = crate::plan::plan_model(&g, 1, spec.context);
        let rows = vec![
            ("model".to_string(), spec.name.clone()),
            ("parameters".into(), p.params_total.to_string()),
            ("active parameters".into(), p.params_active.to_string()),
            ("non-embedding parameters".into(), p.params_non_embedding.to_string()),
            ("training FLOPs per token (6N)".into(), format!("{:.4e}", p.flops_per_token_6n)),
            (format!("training FLOPs per token (Appendix F, T = {})", spec.context), format!("{:.4e}", p.flops_per_token_appendix_f)),
            ("shape".into(), format!("d_model {}, {} layers, {} heads ({} key/value), context {}, vocab {}", spec.d_model, spec.layers, spec.heads, spec.kv_heads, spec.context, spec.vocab)),
        ];
        sections.push_str(&format!("<h2>Plan</h2>{}", table(&rows)));
    }
    // Each plot as an image, never inline markup: whatever an SVG file in the directory holds,
    // it cannot run a script or restyle the page.
    let plots = figures(&svgs);
    if let Some(r) = read("recipe.roux") {
        sections.push_str(&format!("<h2>Recipe</h2><pre>{}</pre>", esc(&r)));
    }
    if let Some(v) = &resolved {
        sections.push_str(&format!("<h2>Resolved definition</h2><pre>{}</pre>", esc(&serde_json::to_string_pretty(v).unwrap_or_default())));
    }
    Ok(page(title, &format!("{warnings}\n<h2>Plots</h2><div class=\"plots\">{plots}</div>\n{sections}")))
}

/// A response in a cell, marked ✓ when it is the answer.
fn said_cell(said: Option<&super::completions::Said>) -> String {
    let Some((text, right)) = said else { return "<td></td>".into() };
    format!("<td><code>{}</code>{}</td>", esc(text), if *right { " ✓" } else { "" })
}

/// The held-out prompts and what the policy answered at the first and last evaluation (or each
/// policy of a `compare` stage, in `order`), or nothing for a run without completions.
pub fn completions_section(dir: &Path, order: &[String]) -> String {
    let Some(s) = super::completions::shown(dir, order) else { return String::new() };
    let heads: String = s.columns.iter().map(|c| format!("<th>{}</th>", esc(c))).collect();
    let body: String = s
        .rows
        .iter()
        .map(|(prompt, answer, said)| format!("<tr><td><code>{}</code></td><td><code>{}</code></td>{}</tr>", esc(prompt), esc(answer), said.iter().map(|x| said_cell(x.as_ref())).collect::<String>()))
        .collect();
    format!(
        "<h2>Held-out completions</h2><p>The first {} held-out prompts, answered greedily (✓: the answer); every prompt's responses, sampled ones too, are in completions/.</p><table class=\"completions\"><tr><th>prompt</th><th>answer</th>{heads}</tr>{body}</table>",
        s.rows.len()
    )
}

/// The last rollouts an RL stage kept: each response with its reward, its terms' values and
/// what the stage made of it (the line's other fields), or nothing.
pub fn rollouts_section(dir: &Path) -> String {
    let Some((step, lines)) = super::completions::last_lines(dir, "rollouts") else { return String::new() };
    const SHOWN: [&str; 5] = ["prompt", "answer", "completion", "reward", "terms"];
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), String::from);
    let body: String = lines
        .iter()
        .map(|l| {
            let terms: Vec<String> = l["terms"].as_array().into_iter().flatten().map(|t| format!("{} {}", text(&t["term"]), human("", &t["value"]))).collect();
            let rest: Vec<String> = l.as_object().into_iter().flatten().filter(|(k, v)| !SHOWN.contains(&k.as_str()) && !v.is_null()).map(|(k, v)| format!("{k} {}", human(k, v))).collect();
            let code = |k: &str| format!("<td><code>{}</code></td>", esc(&text(&l[k])));
            format!("<tr>{}{}{}<td>{}</td><td>{}</td><td>{}</td></tr>", code("prompt"), code("answer"), code("completion"), esc(&human("reward", &l["reward"])), esc(&terms.join(" · ")), esc(&rest.join(" · ")))
        })
        .collect();
    format!("<h2>Rollouts at step {step}</h2><p>The first {} responses sampled for the step's update, with their reward term by term; all of them, at every evaluation, are in rollouts/.</p><table class=\"completions\"><tr><th>prompt</th><th>answer</th><th>response</th><th>reward</th><th>terms</th><th>in the update</th></tr>{body}</table>", lines.len())
}

/// The held-out pairs a reward model scored at its last evaluation: each with both scores, ✓
/// where the chosen response scores higher, or nothing.
pub fn scores_section(dir: &Path) -> String {
    let Some((step, lines)) = super::completions::last_lines(dir, "scores") else { return String::new() };
    let code = |l: &serde_json::Value, k: &str| format!("<td><code>{}</code></td>", esc(l[k].as_str().unwrap_or("")));
    let body: String = lines
        .iter()
        .map(|l| {
            let right = if l["right"] == true { " ✓" } else { "" };
            format!("<tr>{}{}{}<td>{}</td><td>{}{right}</td></tr>", code(l, "prompt"), code(l, "chosen"), code(l, "rejected"), esc(&human("", &l["chosen_score"])), esc(&human("", &l["rejected_score"])))
        })
        .collect();
    format!("<h2>Held-out pairs at step {step}</h2><p>The first {} held-out pairs as the reward model scores them (✓: the chosen response scores higher); all of them, at every evaluation, are in scores/.</p><table class=\"completions\"><tr><th>prompt</th><th>chosen</th><th>rejected</th><th>chosen score</th><th>rejected score</th></tr>{body}</table>", lines.len())
}

/// Plots as images, never inline markup: whatever an SVG holds, it cannot run a script or
/// restyle the page. (name, SVG text) each.
pub fn figures(svgs: &[(String, String)]) -> String {
    svgs.iter()
        .map(|(name, svg)| {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.encode(svg.as_bytes());
            format!("<figure class=\"plot\" data-name=\"{n}\"><img alt=\"{n}\" src=\"data:image/svg+xml;base64,{data}\"><figcaption>{n}</figcaption></figure>", n = esc(name))
        })
        .collect()
}

/// A whole page around `body` (already HTML), with the script that reports in the title
/// whether every plot drew.
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{t}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
ul.warnings {{ background: #fff4e5; border-left: 4px solid #e69500; padding: .6em 1.6em; }}
figure.plot {{ margin: 0; border: 1px solid #ddd; padding: .5em; }}
figure.plot img {{ width: 520px; height: auto; display: block; }}
.wide {{ overflow-x: auto; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ddd; padding: .2em .6em; text-align: left; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
table.completions code {{ white-space: pre-wrap; }}
</style></head>
<body><h1>{t}</h1>
{body}
<script>
// Every plot must have drawn with a real size; the title tells a headless browser the count.
window.addEventListener("load", () => {{
  const figs = [...document.querySelectorAll("figure.plot img")];
  const drawn = figs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 50 && i.getBoundingClientRect().width > 100);
  document.title = (drawn.length === figs.length ? "plots-ok " : "plots-missing ") + drawn.length + "/" + figs.length;
}});
</script>
</body></html>
"#,
        t = esc(title)
    )
}

/// PNG copies of a run's SVG plots (feature `png`); returns the files written.
#[cfg(feature = "png")]
pub fn write_pngs(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut opt = resvg::usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    // The plots ask for `sans-serif`; map it to a family this machine has (fontdb assumes Arial).
    let families: Vec<String> = db.faces().flat_map(|f| f.families.iter().map(|(n, _)| n.clone())).collect();
    if let Some(f) = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"].iter().find(|f| families.iter().any(|x| x == *f)) {
        db.set_sans_serif_family(*f);
    }
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "svg") {
            continue;
        }
        let data = crate::fsio::read_bytes(&p, MAX_FILE_BYTES)?;
        let tree = resvg::usvg::Tree::from_data(&data, &opt).map_err(|e| format!("{}: {e}", p.display()))?;
        let size = tree.size().to_int_size().scale_by(2.0).ok_or("empty plot")?;
        let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty plot")?;
        pixmap.fill(resvg::tiny_skia::Color::WHITE);
        resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(2.0, 2.0), &mut pixmap.as_mut());
        let png = p.with_extension("png");
        let bytes = pixmap.encode_png().map_err(|e| format!("{}: {e}", png.display()))?;
        crate::fsio::write_atomic(&png, &bytes)?;
        out.push(png);
    }
    out.sort();
    Ok(out)
}

#[cfg(not(feature = "png"))]
pub fn write_pngs(_: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    /// A hostile SVG file or file name in a run directory cannot add markup or script to the
    /// page: plots are images (data: URLs) and names are escaped, in attributes too.
    #[test]
    fn a_hostile_plot_cannot_inject_into_the_page() {
        let dir = std::env::temp_dir().join(format!("roux-html-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x\"><b onmouseover=alert(1)>'.svg"), "<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>").unwrap();
        std::fs::write(dir.join("recipe.roux"), "experiment \"</pre><script>alert(2)</script>\" {}").unwrap();
        let page = super::report_html(&dir, "t<i>").unwrap();
        assert_eq!(super::human("best_val_loss", &serde_json::json!(3.4658557176589966)), "3.466 nats/token");
        assert_eq!(super::human("tokens_per_s", &serde_json::json!(63807.06233182311)), "63,807 tokens/s");
        assert_eq!(super::human("params", &serde_json::json!(35200)), "35,200");
        assert_eq!(super::human("model_flops_per_s", &serde_json::json!(15117679664.154184)), "1.512e10 FLOP/s");
        assert_eq!(super::human("resumed_from_step", &serde_json::Value::Null), "-");
        assert_eq!(page.matches("<script").count(), 1, "only the page's own script");
        assert!(!page.contains("<b ") && !page.contains("<i>") && !page.contains("alert(2)</script>"), "{page}");
        assert!(page.contains("data-name=\"x&quot;&gt;&lt;b onmouseover=alert(1)&gt;&#39;.svg\""), "{page}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hostile_completion_is_escaped_and_the_first_and_last_steps_shown() {
        let dir = std::env::temp_dir().join(format!("roux-completions-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("completions")).unwrap();
        let line = |greedy: &str, exact: bool| serde_json::json!({"prompt": "<script>alert(1)</script>", "answer": "A&B", "greedy": greedy, "exact": exact}).to_string() + "\n";
        for (step, greedy, exact) in [(0, "\"x\"", false), (20, "no", false), (100, "A&B", true)] {
            std::fs::write(dir.join("completions").join(format!("step-{step}.jsonl")), line(greedy, exact)).unwrap();
        }
        std::fs::write(dir.join("completions/step-7.txt"), "not a step file").unwrap();
        let html = super::completions_section(&dir, &[]);
        assert!(html.contains("<tr><td><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></td><td><code>A&amp;B</code></td><td><code>&quot;x&quot;</code></td><td><code>A&amp;B</code> ✓</td></tr>"), "{html}");
        assert!(html.contains("<th>answer</th><th>step 0</th><th>step 100</th></tr>") && !html.contains("<script>"), "{html}");
        // The last step's rollouts, their text escaped.
        std::fs::create_dir_all(dir.join("rollouts")).unwrap();
        for step in [3, 10] {
            let line = serde_json::json!({"prompt": "p", "answer": "a", "completion": format!("</td><img src=x onerror=alert({step})>"), "reward": 0.5, "terms": [{"term": "matches(\"<b>\")", "weight": 1.0, "value": 1.0}], "group": 0, "truncated": null});
            std::fs::write(dir.join(format!("rollouts/step-{step}.jsonl")), line.to_string() + "\n").unwrap();
        }
        let html = super::rollouts_section(&dir);
        assert!(html.contains("<h2>Rollouts at step 10</h2>") && html.contains("<td><code>&lt;/td&gt;&lt;img src=x onerror=alert(10)&gt;</code></td><td>0.5000</td><td>matches(&quot;&lt;b&gt;&quot;) 1</td><td>group 0</td></tr>"), "{html}");
        // A reward model's scored pairs, escaped.
        std::fs::create_dir_all(dir.join("scores")).unwrap();
        let pair = serde_json::json!({"prompt": "<i>p", "chosen": "a<b", "rejected": "'x'", "chosen_score": 1.5, "rejected_score": -0.25, "right": true});
        std::fs::write(dir.join("scores/step-8.jsonl"), pair.to_string() + "\n").unwrap();
        let html = super::scores_section(&dir);
        assert!(html.contains("<tr><td><code>&lt;i&gt;p</code></td><td><code>a&lt;b</code></td><td><code>&#39;x&#39;</code></td><td>1.500</td><td>-0.2500 ✓</td></tr>"), "{html}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(super::completions_section(&dir, &[]), "");
        assert_eq!(super::scores_section(&dir), "");
        assert_eq!(super::rollouts_section(&dir), "");
    }
}
