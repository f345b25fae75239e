//! A `compare` stage: every listed policy on the same held-out prompts — mean gold reward,
//! exact-match accuracy (the preferred behaviour: right answer, nothing after it) and KL to the
//! reference — on multiple-choice questions (`choices(…)`: accuracy as lm-evaluation-harness
//! computes it), or on a text corpus's held-out split (perplexity), printed as a table and
//! written to table.md and report.json.

use anyhow::{Context, Result};
use serde_json::json;

use crate::recipe::{CompareSpec, ExampleKind, Reading, Tokenizer};
use crate::report::bars::{bar_chart, Bar};
use crate::run::kit::artifacts::{instructions, load_lm};
use crate::run::kit::choices::Quiz;
use crate::run::kit::perplexity::Heldout;
use crate::run::kit::files::{read_capped, write_atomic};
use crate::run::kit::score::score;
use crate::run::kit::lifecycle::RunDir;
use crate::run::kit::{completions, device, lifecycle, StageCtx};

pub fn run(ctx: &StageCtx, c: &CompareSpec) -> Result<()> {
    let (recipe, stage, runs) = (ctx.recipe, ctx.stage, &ctx.runs);
    let Some(run) = lifecycle::begin_stage(ctx, 1)? else {
        // Cached: show the table again.
        if let Ok(t) = read_capped(&ctx.dir.join("table.md"), 1 << 20) {
            tracing::info!("{t}");
        }
        return Ok(());
    };
    let dev = device::device(c.device)?;
    if recipe.example_set(&c.data).is_some_and(|s| s.kind == ExampleKind::Choices) {
        return choices(ctx, c, run, dev);
    }
    if recipe.data(&c.data).is_some() {
        return perplexity(ctx, c, run, dev);
    }
    let (set, split) = instructions(recipe, &c.data)?;
    let codec = crate::run::kit::codec::Codec::new(recipe, &set)?;
    let held: Vec<_> = split.held_out.into_iter().take(c.examples).collect();
    let mut reference = load_lm(recipe, runs, &c.reference, dev)?.computing(c.precision);
    reference.freeze();
    let mut rows = vec![];
    let mut table = "| policy | greedy: gold reward | exact match | sampled: gold reward | preferred (exact) | verbose | KL to reference |\n|---|---:|---:|---:|---:|---:|---:|\n".to_string();
    for (label, r) in &c.policies {
        let m = load_lm(recipe, runs, r, dev)?.computing(c.precision);
        let s = score(&m, Some(&reference), &codec, &held, c.max_new)?;
        table.push_str(&format!(
            "| {label} | {:.3} | {:.1}% | {:.3} | {:.1}% | {:.1}% | {:.3} |\n",
            s.gold,
            100.0 * s.exact,
            s.sampled_gold,
            100.0 * s.sampled_exact,
            100.0 * s.sampled_verbose,
            s.kl.unwrap_or(0.0)
        ));
        tracing::info!("{}: {label}: gold {:.3}, exact {:.1}%, KL {:.3}; e.g. {}", stage.name, s.gold, 100.0 * s.exact, s.kl.unwrap_or(0.0), s.example());
        completions::write_as(&run, label, &s)?;
        rows.push(json!({"policy": label, "score": s}));
    }
    table.push_str(&format!("\n{} held-out prompts of `{}`; greedy decoding for the first two columns; then one response sampled at temperature 1 per prompt (the policy's behaviour): gold reward, preferred behaviour (the answer and nothing more), verbose (the answer, then more), and KL(π ‖ reference) per response.\n", held.len(), set.name));
    tracing::info!("\n{table}");
    if run.leads {
        write_atomic(&run.dir.join("table.md"), table.as_bytes())?;
    }
    let report = json!({"experiment": recipe.experiment, "kind": "compare", "precision": c.precision, "examples": held.len(), "rows": rows});
    // No metrics: the stage is one evaluation. An empty metrics file keeps plots quiet.
    run.finish(&[], report, &ctx.title())
}

/// Every policy's accuracy on the first `examples` questions of a multiple-choice set, each
/// reading them with the tokens it learned; each question's log-likelihoods and picks in
/// samples.jsonl (lm-eval's `--log_samples`).
fn choices(ctx: &StageCtx, c: &CompareSpec, run: RunDir, dev: tch::Device) -> Result<()> {
    let recipe = ctx.recipe;
    let set = recipe.example_set(&c.data).context("checked recipe names its questions")?;
    let own = Reading { tokenizer: recipe.set_tokenizer(set), trained_in: None };
    let reads = readings(c, &own);
    let mixed = reads.iter().any(|r| *r != reads[0]);
    let mut quizzes: Vec<(&Reading, Quiz)> = vec![];
    let mut table = format!("| policy |{} accuracy | accuracy, per character |\n|---|{}---:|---:|\n", if mixed { " tokenizer |" } else { "" }, if mixed { "---|" } else { "" });
    let (mut rows, mut samples, mut bars) = (vec![], String::new(), vec![]);
    for ((label, r), reading) in c.policies.iter().zip(&reads) {
        let at = once(&mut quizzes, reading, || Quiz::read(recipe, &c.data, c.examples, &reading.tokenizer, bpe_dir(ctx, reading).as_deref()))?;
        let quiz = &quizzes[at].1;
        let mut m = load_lm(recipe, &ctx.runs, r, dev)?.computing(c.precision);
        m.freeze();
        let progress = crate::run::kit::progress::Progress::new(&format!("{}: {label}", ctx.stage.name), 0, quiz.len() as u64);
        let (a, scored) = quiz.score(&m, Some(&progress)).with_context(|| format!("scoring policy `{label}` on `{}`", c.data))?;
        let tokens = if mixed { format!(" {} |", named(reading)) } else { String::new() };
        table.push_str(&format!("| {label} |{tokens} {:.1}% ± {:.1} | {:.1}% ± {:.1} |\n", 100.0 * a.acc, 100.0 * a.acc_stderr, 100.0 * a.acc_norm, 100.0 * a.acc_norm_stderr));
        tracing::info!("{}: {label}: accuracy {:.1}%, per character {:.1}% on {} questions ({})", ctx.stage.name, 100.0 * a.acc, 100.0 * a.acc_norm, a.questions, named(reading));
        for (i, s) in scored.iter().enumerate() {
            samples.push_str(&format!("{}\n", json!({"policy": label, "question": i, "loglikelihoods": s.loglikelihoods, "answer": s.answer, "pick": s.pick, "pick_norm": s.pick_norm})));
        }
        bars.push(Bar { label: label.clone(), value: 100.0 * a.acc, error: 100.0 * a.acc_stderr });
        rows.push(json!({"policy": label, "reads": named(reading), "choices": a}));
    }
    let n = quizzes.first().context("`compare` has a policy")?.1.len();
    let each = if mixed { ", each policy reading them with the tokens it learned" } else { "" };
    table.push_str(&format!("\n{n} questions of `{}`{each}, each choice scored by the log-likelihood of its text after the question (lm-evaluation-harness's multiple-choice accuracy); per character: that log-likelihood over the choice's length in characters (lm-eval's acc_norm); ± one standard error.\n", c.data));
    tracing::info!("\n{table}");
    if run.leads {
        write_atomic(&run.dir.join("table.md"), table.as_bytes())?;
        write_atomic(&run.dir.join("samples.jsonl"), samples.as_bytes())?;
        write_atomic(&run.dir.join("accuracy.svg"), bar_chart(&format!("{}: accuracy on `{}`", ctx.title(), c.data), "accuracy, % (± one standard error)", &bars).as_bytes())?;
    }
    let report = json!({"experiment": recipe.experiment, "kind": "compare", "precision": c.precision, "examples": n, "tokenizers": quizzes.len(), "rows": rows});
    run.finish(&[], report, &ctx.title())
}

/// The index in `cache` of what `read` makes of the data for `reading`: made by the first policy
/// that reads with that tokenizer, reused by the others.
fn once<'a, T>(cache: &mut Vec<(&'a Reading, T)>, reading: &'a Reading, read: impl FnOnce() -> Result<T>) -> Result<usize> {
    if let Some(i) = cache.iter().position(|(x, _)| *x == reading) {
        return Ok(i);
    }
    cache.push((reading, read()?));
    Ok(cache.len() - 1)
}

/// Where a BPE reading's tokenizer is: the run of the `train` stage that trained it.
fn bpe_dir(ctx: &StageCtx, reading: &Reading) -> Option<std::path::PathBuf> {
    reading.trained_in.as_ref().map(|stage| ctx.runs.join(stage))
}

/// How each policy reads the data: with the tokens its weights learned (`CompareSpec::reads`,
/// resolved by the checker), else `own`, the data's.
fn readings<'a>(c: &'a CompareSpec, own: &'a Reading) -> Vec<&'a Reading> {
    (0..c.policies.len()).map(|i| c.reads.get(i).unwrap_or(own)).collect()
}

/// Every policy's perplexity on the held-out split of a corpus, each reading it with the tokens
/// it learned (`CompareSpec::reads`): bits per byte and word perplexity compare them all.
fn perplexity(ctx: &StageCtx, c: &CompareSpec, run: RunDir, dev: tch::Device) -> Result<()> {
    let recipe = ctx.recipe;
    let corpus = recipe.data(&c.data).context("checked recipe names its corpus")?;
    let own = Reading { tokenizer: corpus.tokenizer.clone(), trained_in: None };
    let reads = readings(c, &own);
    let mixed = reads.iter().any(|r| *r != reads[0]);
    // One held-out split per tokenizer (`once`).
    let mut held: Vec<(&Reading, Heldout)> = vec![];
    let mut table = format!("| policy |{} loss per token | perplexity | bits per byte | word perplexity | context |\n|---|{}---:|---:|---:|---:|---:|\n", if mixed { " tokenizer | held-out tokens |" } else { "" }, if mixed { "---|---:|" } else { "" });
    let (mut rows, mut curves) = (vec![], vec![]);
    for ((label, r), reading) in c.policies.iter().zip(&reads) {
        let at = once(&mut held, reading, || Heldout::read_as(recipe, &c.data, &reading.tokenizer, bpe_dir(ctx, reading).as_deref()))?;
        let h = &held[at].1;
        let mut m = load_lm(recipe, &ctx.runs, r, dev)?.computing(c.precision);
        m.freeze();
        let windows = h.count(&m, c.stride);
        let progress = crate::run::kit::progress::Progress::new(&format!("{}: {label}", ctx.stage.name), 0, windows as u64);
        let p = h.score(&m, c.stride, Some(&progress)).with_context(|| format!("scoring policy `{label}` on `{}`", c.data))?;
        let context = m.spec().context;
        let tokens = if mixed { format!(" {} | {} |", named(reading), h.tokens()) } else { String::new() };
        table.push_str(&format!("| {label} |{tokens} {:.4} | {} | {:.4} | {} | {context} |\n", p.loss, shown(p.perplexity), p.bits_per_byte, shown(p.word_perplexity)));
        tracing::info!("{}: {label}: loss {:.4}, perplexity {:.3}, {:.4} bits per byte over {} tokens ({})", ctx.stage.name, p.loss, p.perplexity, p.bits_per_byte, p.tokens, named(reading));
        curves.push((label.clone(), p.by_position.clone()));
        rows.push(json!({"policy": label, "context": context, "reads": named(reading), "held_out_tokens": h.tokens(), "documents": h.documents(), "perplexity": p}));
    }
    let first = &held.first().context("`compare` has a policy")?.1;
    let (bytes, words) = first.size();
    let moving = c.stride.map_or("windows that do not overlap".to_string(), |s| format!("windows moving by {s} tokens (at most the context)"));
    let (each, docs) = match first.documents() {
        1 => ("each but the first predicted once from up to a context of tokens before it", String::new()),
        n => ("each but a document's first predicted once from up to a context of the document's tokens before it", format!(", {n} documents")),
    };
    let read = if mixed {
        format!("The held-out split of `{}` ({bytes} bytes, {words} words{docs}), read by each policy with the tokens it learned: its tokens {each}, in {moving}; loss in nats per token. Loss per token and perplexity are per each policy's own tokens, comparable only between policies of one tokenizer; bits per byte and word perplexity divide the summed loss by the text's bytes and words, the same for every policy.", c.data)
    } else {
        format!("{} held-out tokens of `{}` ({bytes} bytes, {words} words{docs}), {each}, in {moving}; loss in nats per token; bits per byte and word perplexity: the summed loss over the text's bytes and words.", first.tokens(), c.data)
    };
    table.push_str(&format!("\n{read}\n"));
    tracing::info!("\n{table}");
    if run.leads {
        write_atomic(&run.dir.join("table.md"), table.as_bytes())?;
        write_atomic(&run.dir.join("loss_by_context.svg"), crate::report::plots::by_position_svg(&ctx.title(), &curves).as_bytes())?;
        let bars: Vec<Bar> = rows.iter().map(|r| Bar { label: r["policy"].as_str().unwrap_or("?").to_string(), value: r["perplexity"]["bits_per_byte"].as_f64().unwrap_or(f64::NAN), error: 0.0 }).collect();
        write_atomic(&run.dir.join("bits_per_byte.svg"), bar_chart(&format!("{}: bits per byte on `{}`", ctx.title(), c.data), "bits per byte of held-out text (lower is better)", &bars).as_bytes())?;
    }
    let report = json!({"experiment": recipe.experiment, "kind": "compare", "precision": c.precision, "tokens": first.tokens(), "tokenizers": held.len(), "documents": first.documents(), "bytes": bytes, "words": words, "rows": rows});
    run.finish(&[], report, &ctx.title())
}

/// The tokens a policy reads with, for the table: "bytes", "BPE 1024 (`pretrain`)", "`base`'s tokenizer".
fn named(r: &Reading) -> String {
    match (&r.tokenizer, &r.trained_in) {
        (Tokenizer::Bytes, _) => "bytes".to_string(),
        (Tokenizer::Bpe { vocab }, Some(stage)) => format!("BPE {vocab} (`{stage}`)"),
        (Tokenizer::Bpe { vocab }, None) => format!("BPE {vocab}"),
        (Tokenizer::Model { model, .. }, _) => format!("`{model}`'s tokenizer"),
    }
}

/// A perplexity to read: three decimals, or three digits and a power of ten when it is large.
fn shown(x: f64) -> String {
    if x < 1e6 { format!("{x:.3}") } else { format!("{x:.3e}") }
}
