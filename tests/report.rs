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
        assert!(dom.contains(&format!("<title>plots-ok {n}/{n}</title>")), "{stage}: chromium did not draw every plot; title: {:?}", dom.split("<title>").nth(1).map(|t| t.split("</title>").next()));
        let shot = out.join(format!("{stage}-report.png"));
        let o = chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1200,2400", &format!("file://{}", page.display())]);
        assert!(shot.exists() && std::fs::metadata(&shot).unwrap().len() > 20_000, "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
        eprintln!("{stage}: {n} plots drawn; screenshot {}", shot.display());
    }
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
    assert!(String::from_utf8_lossy(&o.stderr).contains("is neither a run directory (report.json or metrics.jsonl) nor an experiment's directory of them"), "{}", String::from_utf8_lossy(&o.stderr));
}
