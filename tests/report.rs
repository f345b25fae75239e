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

/// Debian's chromium (the test command installs it), run headless as the machine allows.
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = root().join("target/test-runs/report/chromium-profile");
    let _ = std::fs::remove_dir_all(&profile);
    Command::new("chromium")
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
        .expect("chromium on PATH (scripts/test.sh installs Debian's chromium)")
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
