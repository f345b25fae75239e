//! `roux run --nproc N`: the same command under torchrun, one process per device
//! (`torchrun --no-python --standalone --nproc-per-node N roux run …`). Several nodes are
//! launched with torchrun itself and its rendezvous flags (README).

use std::ffi::OsString;
use std::path::PathBuf;

/// This command's arguments without `--nproc N` (or `--nproc=N`).
pub fn without_nproc(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = vec![];
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// torchrun from the active venv (`$VIRTUAL_ENV/bin`), else from PATH.
fn torchrun() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/torchrun"));
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("torchrun")).find(|c| c.is_file()));
    venv.filter(|p| p.is_file()).or(on_path)
}

/// Replace this process with torchrun starting `nproc` copies of `roux run file …`; returns
/// only when that cannot happen (the exit code). The recipe is checked first, and every
/// training stage's batch against `nproc` processes, so a batch that cannot split is one
/// message here rather than one per process under torchrun's traceback.
/// Whether a stage's batch divides over `n` processes (and its micro-batches), and its experts
/// when it divides them: the message each process would otherwise print through torchrun.
fn splits(stage: &roux::recipe::StageSpec, n: usize) -> Result<(), String> {
    use roux::recipe::StageKind;
    let name = &stage.name;
    match &stage.kind {
        StageKind::Train(t) => t.micro_batch(name, n).and_then(|_| roux::recipe::expert_parallel_fits(name, t.expert_parallel, n)),
        StageKind::Finetune(f) => f.opt.micro_batch(name, n).map(drop),
        StageKind::RewardModel(r) => r.opt.micro_batch(name, n).map(drop),
        StageKind::Dpo(d) => d.opt.micro_batch(name, n).map(drop),
        StageKind::Ppo(p) => p.opt.micro_batch(name, n).map(drop),
        StageKind::Distill(k) => k.opt.micro_batch(name, n).map(drop),
        StageKind::OnlineDpo(o) => o.opt.micro_batch(name, n).map(drop),
        StageKind::BestOfN(b) => b.opt.micro_batch(name, n).map(drop),
        StageKind::Grpo(g) => roux::recipe::split_batch(name, g.opt.batch / g.group, n, 1).map(drop).map_err(|e| format!("{e} (a GRPO batch splits by prompts, {} a step)", g.opt.batch / g.group)),
        StageKind::Mixture(_) | StageKind::Isoflop(_) | StageKind::Compare(_) => Ok(()),
    }
}

pub fn exec_under_torchrun(file: &std::path::Path, nproc: u16) -> u8 {
    let compiled = match super::check::load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for recipe in compiled.recipes() {
        for stage in &recipe.stages {
            if let Err(e) = splits(stage, nproc as usize) {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    if std::env::var_os("WORLD_SIZE").is_some() {
        eprintln!("error: --nproc inside a torchrun job (WORLD_SIZE is set): torchrun already started the processes; drop --nproc");
        return 2;
    }
    let Some(torchrun) = torchrun() else {
        eprintln!("error: --nproc {nproc} needs torchrun (from PyTorch); activate the venv with PyTorch 2.11 (`source scripts/env.sh`) or put torchrun on PATH");
        return 2;
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: finding this roux to start under torchrun: {e}");
            return 2;
        }
    };
    let rest = without_nproc(std::env::args_os().skip(1));
    let mut cmd = std::process::Command::new(&torchrun);
    cmd.args(["--no-python", "--standalone", "--nproc-per-node", &nproc.to_string()]).arg(exe).args(rest);
    // Gloo splits each collective over threads; one process per core is what these runs assume.
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        cmd.env("OMP_NUM_THREADS", "1");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        eprintln!("error: starting {}: {err}", torchrun.display());
        2
    }
    #[cfg(not(unix))]
    match cmd.status() {
        Ok(s) => s.code().unwrap_or(1).clamp(0, 255) as u8,
        Err(e) => {
            eprintln!("error: starting {}: {e}", torchrun.display());
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_taken_out_of_the_command_torchrun_repeats() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(without_nproc(args(&["run", "r.roux", "--nproc", "2", "--fresh"]).into_iter()), args(&["run", "r.roux", "--fresh"]));
        assert_eq!(without_nproc(args(&["run", "--nproc=4", "r.roux"]).into_iter()), args(&["run", "r.roux"]));
    }
}
