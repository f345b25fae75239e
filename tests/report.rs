//! `roux report RUN`: SVG and PNG plots and one self-contained HTML page, which headless
//! Chromium renders with every plot drawn (a screenshot is left in target/test-runs/report/).
#![cfg(feature = "torch")]

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn roux(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roux")).args(args).env("ROUX_QUIET", "1").output().unwrap()
}

/// Debian's chromium (the test command installs it), run headless as the machine allows. Each
/// call has a profile of its own: two browsers on one profile hand the page to each other (the
/// tests run in parallel), and the second exits without printing it.
fn chromium(args: &[&str]) -> std::process::Output {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let profile = root().join(format!("target/test-runs/chromium-profiles/{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .output()
        .expect("chromium on PATH (scripts/test.sh installs Debian's chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    out
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_every_plot_drawn() {
    let out = root().join("target/test-runs/report");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let o = roux(&["run", root().join("tests/fixtures/tiny-lifecycle.roux").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    for stage in ["pretrain", "rl"] {
        let run = out.join("tiny-lifecycle").join(stage);
        let o = roux(&["report", run.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let listed = String::from_utf8_lossy(&o.stdout).to_string();
        let svgs = listed.lines().filter(|l| l.ends_with(".svg")).count();
        let pngs = listed.lines().filter(|l| l.ends_with(".png")).count();
        assert!(svgs >= 2 && pngs == std::fs::read_dir(&run).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "svg")).count(), "{listed}");
        if stage == "rl" {
            for plot in ["reward.svg", "kl.svg", "ppo.svg"] {
                assert!(listed.contains(plot), "{stage}: no {plot}:\n{listed}");
            }
        }
        let page = run.join("report.html");
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(!html.contains("src=\"http") && !html.contains("<link"), "the page must be self-contained");
        // The page's own script titles it "plots-ok N/N" once every plot has a size and lines.
        let dom = chromium(&["--dump-dom", &format!("file://{}", page.display())]);
        let dom = String::from_utf8_lossy(&dom.stdout).to_string();
        let n = html.matches("<figure class=\"plot\"").count();
        assert_eq!(long_floats(&html), Vec::<String>::new(), "{stage}: raw floats in the page");
        assert!(dom.contains(&format!("<title>plots-ok {n}/{n}</title>")), "{stage}: chromium did not draw every plot; title: {:?}", dom.split("<title>").nth(1).map(|t| t.split("</title>").next()));
        let shot = out.join(format!("{stage}-report.png"));
        let o = chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1200,2400", &format!("file://{}", page.display())]);
        assert!(shot.exists() && std::fs::metadata(&shot).unwrap().len() > 20_000, "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
        eprintln!("{stage}: {n} plots drawn; screenshot {}", shot.display());
    }
    // The experiment's page leads with its stages: a row each, with the result it is judged by.
    let page = out.join("experiment.html");
    let o = roux(&["report", out.join("tiny-lifecycle").to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    let stages: Vec<String> = std::fs::read_dir(out.join("tiny-lifecycle")).unwrap().map(|e| e.unwrap()).filter(|e| e.path().join("report.json").exists()).map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert!(html.contains(&format!("<title>Experiment tiny-lifecycle: {} stages</title>", stages.len())), "{}", &html[..200]);
    let summary = html.split("<table class=\"stages\">").nth(1).unwrap().split("</table>").next().unwrap();
    for stage in &stages {
        assert!(summary.contains(&format!("<tr><th>{stage}</th>")), "no row for {stage}: {summary}");
    }
    assert!(summary.contains("held-out pairwise accuracy") && summary.contains("validation loss"), "{summary}");
    // In pipeline order: a stage after those it reads.
    let at = |s: &str| summary.find(&format!("<tr><th>{s}</th>")).unwrap();
    assert!(at("pretrain") < at("sft") && at("sft") < at("rm") && at("rm") < at("rl") && at("sft") < at("po"), "{summary}");
    assert!(html.find("<h2>Stages</h2>").unwrap() < html.find("<h2>Plots</h2>").unwrap());
    assert_eq!(long_floats(&html), Vec::<String>::new());
}

#[test]
fn runs_compare_side_by_side_with_what_differs_and_a_line_per_run() {
    let out = root().join("target/test-runs/compare");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let tiny = root().join("tests/fixtures/tiny.roux");
    for (dir, lr) in [("slow", "3e-3"), ("fast", "1e-2")] {
        let o = roux(&["run", tiny.to_str().unwrap(), "--out", out.join(dir).to_str().unwrap(), "--set", &format!("pretrain.optimizer.lr={lr}")]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (out.join("slow/tiny/pretrain"), out.join("fast/tiny/pretrain"));
    let page = out.join("compare.html");
    let o = roux(&["report", a.to_str().unwrap(), b.to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    // What differs is the learning rate, named with both values; nothing else in the definition.
    let differs = html.split("<h2>What differs</h2>").nth(1).unwrap().split("<h2>").next().unwrap();
    assert!(differs.contains("<th>train.optimizer.lr</th><td>0.003</td><td>0.01</td>"), "{differs}");
    assert_eq!(differs.matches("<tr>").count(), 2, "a header row and the one setting: {differs}");
    // The loss chart holds one line per run, named by the runs' shortest distinct paths.
    use base64::Engine;
    let loss = html.split("data-name=\"loss.svg\"").nth(1).unwrap().split("base64,").nth(1).unwrap().split('"').next().unwrap();
    let svg = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(loss).unwrap()).unwrap();
    assert!(svg.contains("slow/tiny/pretrain") && svg.contains("fast/tiny/pretrain"), "{svg}");
    assert!(html.contains("<th>final val loss</th>"), "the results table");
    let n = html.matches("<figure class=\"plot\"").count();
    assert!(n >= 4, "loss, val_loss, lr, grad_norm at least: {n}");
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom", &format!("file://{}", page.display())]).stdout).to_string();
    assert!(dom.contains(&format!("<title>plots-ok {n}/{n}</title>")), "chromium did not draw every plot; title: {:?}", dom.split("<title>").nth(1).map(|t| t.split("</title>").next()));
    // An experiment's directory compares its stages; a directory of neither kind is an error.
    let o = roux(&["report", out.join("slow/tiny").to_str().unwrap(), "-o", out.join("exp.html").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = roux(&["report", out.to_str().unwrap(), out.join("slow").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is neither a run directory (report.json or metrics.jsonl) nor an experiment's or a sweep's directories of them"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Numbers in a page's visible text written with more than 6 significant digits (raw floats
/// such as 3.136216735839844 that a person should never have to read).
fn long_floats(html: &str) -> Vec<String> {
    let mut text = String::new();
    let mut rest = html;
    // Drop scripts, styles and tags; what is left is what a reader sees.
    while let Some(i) = rest.find('<') {
        text.push_str(&rest[..i]);
        text.push(' ');
        let tail = &rest[i..];
        let end = ["script", "style"].iter().find(|t| tail.starts_with(&format!("<{t}"))).map_or_else(|| tail.find('>').map(|j| j + 1), |t| tail.find(&format!("</{t}>")).map(|j| j + t.len() + 3));
        rest = &tail[end.unwrap_or(tail.len())..];
    }
    text.push_str(rest);
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.contains('.') && w.chars().any(|c| c.is_ascii_digit()))
        .filter(|w| w.trim_matches('.').replace('.', "").trim_start_matches('0').len() > 6)
        .map(str::to_string)
        .collect()
}

#[test]
fn long_floats_finds_raw_numbers_only_in_visible_text() {
    assert_eq!(long_floats("<td>3.136216735839844 nats</td><td>1.914</td><td>0.0001234</td>"), ["3.136216735839844"]);
    assert_eq!(long_floats("<script>x = 0.12345678</script><img src=\"a.1234567.svg\"><p>1,115,394 tokens</p>"), Vec::<String>::new());
}

#[test]
fn a_sweeps_report_names_its_best_point_and_plots_the_loss_against_each_swept_value() {
    let out = root().join("target/test-runs/sweep-report");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let o = roux(&["run", root().join("tests/fixtures/tiny-sweep.roux").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    // Each point's final validation loss, read from its own report; the best is the lowest.
    let mut points: Vec<(String, f64)> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|d| {
            let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("pretrain/report.json")).unwrap()).unwrap();
            let name = d.file_name().unwrap().to_str().unwrap().strip_prefix("tiny-sweep-").unwrap().replace(',', ", ");
            (name, report["final_val_loss"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(points.len(), 4);
    points.sort_by(|a, b| a.1.total_cmp(&b.1));
    let page = out.join("sweep.html");
    // The sweep's name stands for its points' directories.
    let o = roux(&["report", out.join("tiny-sweep").to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<title>Sweep tiny-sweep: 4 points</title>"), "{}", &html[..300]);
    let (best, loss) = &points[0];
    assert!(html.contains(&format!("<b>Best point</b>: {best} with final val loss {loss:.3} nats/token.")), "best {best} ({loss})");
    for (name, loss) in &points {
        let (d, lr) = name.split_once(", ").unwrap();
        let row = format!("<td>{}</td><td>{}</td><td>{loss:.3} nats/token</td>", &d["d_model=".len()..], &lr["lr=".len()..]);
        assert!(html.contains(&row), "no row {row}");
    }
    // The loss against each swept value: a line per value of the other.
    use base64::Engine;
    for (plot, lines) in [("pretrain-val_loss_vs_d_model.svg", ["lr=1e-3", "lr=1e-2"]), ("pretrain-val_loss_vs_lr.svg", ["d_model=16", "d_model=32"])] {
        let data = html.split(&format!("data-name=\"{plot}\"")).nth(1).unwrap_or_else(|| panic!("no {plot}")).split("base64,").nth(1).unwrap().split('"').next().unwrap();
        let svg = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2, "{plot}");
        assert!(lines.iter().all(|l| svg.contains(l)), "{plot}: {svg}");
    }
    assert_eq!(long_floats(&html), Vec::<String>::new());
    let n = html.matches("<figure class=\"plot\"").count();
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom", &format!("file://{}", page.display())]).stdout).to_string();
    assert!(dom.contains(&format!("<title>plots-ok {n}/{n}</title>")), "chromium did not draw every plot; title: {:?}", dom.split("<title>").nth(1).map(|t| t.split("</title>").next()));
    let shot = out.join("sweep-report.png");
    let o = chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1200,2400", &format!("file://{}", page.display())]);
    assert!(shot.exists() && std::fs::metadata(&shot).unwrap().len() > 20_000, "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
}

/// The report pages of the shipped recipes people look at first, checked as the tests check the
/// fixtures' and saved as docs/screenshots/*.png. Runs the recipes (about half an hour on two
/// cores the first time; finished runs are reused): `scripts/screenshots.sh`.
#[test]
#[ignore = "trains four shipped recipes: run by scripts/screenshots.sh"]
fn shipped_recipes_reports_render_with_every_plot_and_readable_numbers() {
    let out = root().join("target/screenshots");
    let shots = root().join("docs/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for recipe in ["demo", "moe-switch", "width-sweep", "lifecycle"] {
        let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", root().join(format!("recipes/{recipe}.roux")).to_str().unwrap(), "--out", out.to_str().unwrap()]).status().unwrap();
        assert!(o.success(), "{recipe} did not run");
    }
    // Healthy runs raise no health warning (each signal's provoking test is beside its code).
    for stage in ["demo/pretrain", "lifecycle/pretrain", "lifecycle/sft", "lifecycle/rm", "lifecycle/rl", "lifecycle/po", "lifecycle/gr"] {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(stage).join("report.json")).unwrap()).unwrap();
        assert_eq!(report["warnings"].as_array().map_or(0, Vec::len), 0, "{stage}: {}", report["warnings"]);
    }
    // (name, what `roux report` is given, the page it writes)
    let pages = [
        ("demo", out.join("demo/pretrain"), out.join("demo/pretrain/report.html")),
        ("moe-switch", out.join("moe-switch/pretrain"), out.join("moe-switch/pretrain/report.html")),
        ("width-sweep", out.join("width-sweep"), out.join("width-sweep.html")),
        ("lifecycle", out.join("lifecycle"), out.join("lifecycle.html")),
        ("lifecycle-ppo", out.join("lifecycle/rl"), out.join("lifecycle/rl/report.html")),
        ("lifecycle-dpo", out.join("lifecycle/po"), out.join("lifecycle/po/report.html")),
    ];
    for (name, target, page) in pages {
        let o = roux(&["report", target.to_str().unwrap(), "-o", page.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let html = std::fs::read_to_string(&page).unwrap();
        assert_eq!(long_floats(&html), Vec::<String>::new(), "{name}: raw floats in the page");
        let n = html.matches("<figure class=\"plot\"").count();
        let dom = String::from_utf8_lossy(&chromium(&["--dump-dom", &format!("file://{}", page.display())]).stdout).to_string();
        assert!(n >= 2 && dom.contains(&format!("<title>plots-ok {n}/{n}</title>")), "{name}: not every one of {n} plots drew");
        let shot = shots.join(format!("{name}.png"));
        let o = chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1100,2600", "--hide-scrollbars", &format!("file://{}", page.display())]);
        assert!(shot.exists() && std::fs::metadata(&shot).unwrap().len() > 20_000, "{name}: no screenshot: {}", String::from_utf8_lossy(&o.stderr));
        eprintln!("{name}: {n} plots drawn; {}", shot.display());
    }
}
