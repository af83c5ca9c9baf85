//! `isnad journal ...`: the auditor's tools. They work on a data directory or on an export file,
//! and need no network. They never write to the data directory: it is opened read-only
//! ([`isnad_journal::open_store_read_only`]), so they run as a user who may only read it, and a
//! write that a crash left incomplete at the log's end is reported, not cut back (only
//! `isnad serve` repairs the log it runs on).

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::VerifyingKey;
use isnad_journal::{
    checkpoint::Checkpoint,
    export::{
        export_store, parse_entry_line, tree_of, verify_export, verify_store, InclusionBundle,
    },
    keys::{parse_public_key, PUB_FILE},
    open_store_read_only, store_path,
    verify::{Problem, Summary},
    Entry, LogStore, TornTail,
};
use serde_json::json;

/// Exit code for a verification that found a problem (usage errors exit 2, others 1).
pub const EXIT_TAMPERED: i32 = 3;

fn open_store(data_dir: &Path) -> anyhow::Result<std::sync::Arc<dyn LogStore>> {
    let path = store_path(data_dir);
    if !path.exists() {
        bail!(
            "no journal in {} (expected {})",
            data_dir.display(),
            path.display()
        );
    }
    open_store_read_only(data_dir)
        .with_context(|| format!("opening the journal in {}", data_dir.display()))
}

fn read_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_public_key(&text).with_context(|| format!("{}", path.display()))
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} entries ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

fn report(
    result: Result<Summary, Problem>,
    torn: Option<TornTail>,
    json_out: bool,
    what: &str,
) -> anyhow::Result<i32> {
    match result {
        Ok(s) => {
            if json_out {
                let torn = torn
                    .map(|t| json!({"segment": t.segment, "offset": t.offset, "bytes": t.bytes}));
                println!(
                    "{}",
                    json!({"ok": true, "entries": s.entries, "checkpoints": s.checkpoints, "root": B64.encode(s.root), "torn_tail": torn})
                );
            } else {
                println!(
                    "OK: {what}: {} entries, {} checkpoints verified; root {}",
                    s.entries,
                    s.checkpoints,
                    B64.encode(s.root)
                );
                if let Some(t) = torn {
                    println!(
                        "NOTE: past the last whole batch, the log ends in a write a crash left incomplete ({t}). \
                         It was never acknowledged and is not part of the log; nothing was changed \
                         (`isnad serve` cuts it back when it next starts)."
                    );
                }
            }
            Ok(0)
        }
        Err(p) => {
            if json_out {
                println!("{}", json!({"ok": false, "seq": p.seq, "reason": p.reason}));
            } else {
                println!(
                    "FAILED: {what}: first bad entry is seq {}: {}",
                    p.seq, p.reason
                );
            }
            Ok(EXIT_TAMPERED)
        }
    }
}

/// `journal verify`: every entry, signature and checkpoint of the data directory.
pub fn verify(data_dir: &Path, public_key: Option<&Path>, json_out: bool) -> anyhow::Result<i32> {
    // Pin the key the operator exported (node.pub) unless the auditor brings their own copy.
    let default_pub = data_dir.join(PUB_FILE);
    let key_path = public_key
        .map(Path::to_path_buf)
        .or_else(|| default_pub.exists().then_some(default_pub));
    let pinned = key_path.as_deref().map(read_key).transpose()?;
    let store = open_store(data_dir)?;
    let pb = progress_bar("verifying");
    let result = verify_store(&store, pinned.as_ref(), &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    report(
        result,
        store.torn_tail(),
        json_out,
        &format!("journal in {}", data_dir.display()),
    )
}

/// `journal export`: the whole log as self-contained JSONL.
pub fn export(data_dir: &Path, output: Option<&Path>) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let n = match output {
        Some(p) if p != Path::new("-") => {
            let mut f = std::io::BufWriter::new(
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            let n = export_store(&store, None, &mut f)?;
            f.flush()?;
            f.get_ref().sync_all()?;
            n
        }
        _ => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            export_store(&store, None, &mut lock)?
        }
    };
    eprintln!("exported {n} entries");
    Ok(0)
}

fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        Ok(Box::new(BufReader::new(std::io::stdin())))
    } else {
        Ok(Box::new(BufReader::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )))
    }
}

/// `journal verify-export`: an export file, with only the file (and ideally a pinned key).
pub fn verify_export_file(
    file: &Path,
    public_key: Option<&Path>,
    checkpoint: Option<&Path>,
    json_out: bool,
) -> anyhow::Result<i32> {
    let pinned = public_key.map(read_key).transpose()?;
    let note = checkpoint
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let mut input = open_input(file)?;
    let pb = progress_bar("verifying");
    let result = verify_export(
        &mut input,
        pinned.as_ref(),
        note.as_deref(),
        &mut |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        },
    );
    pb.finish_and_clear();
    if pinned.is_none() && result.is_ok() && !json_out {
        eprintln!(
            "note: no --public-key given; the export was checked against the key in its own header"
        );
    }
    report(
        result,
        None,
        json_out,
        &format!("export {}", file.display()),
    )
}

/// `journal prove`: an inclusion proof bundle for one entry, from a data directory or an export.
pub fn prove(
    data_dir: &Path,
    export: Option<&Path>,
    seq: u64,
    output: Option<&Path>,
) -> anyhow::Result<i32> {
    let bundle = match export {
        Some(file) => prove_from_export(file, seq)?,
        None => prove_from_store(&open_store(data_dir)?, seq)?,
    };
    let text = serde_json::to_string_pretty(&bundle)?;
    match output {
        Some(p) if p != Path::new("-") => {
            std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?
        }
        _ => println!("{text}"),
    }
    Ok(0)
}

fn prove_from_store(store: &dyn LogStore, seq: u64) -> anyhow::Result<InclusionBundle> {
    let (key, _) = isnad_journal::export::store_identity(store)?;
    let tree = tree_of(store)?;
    let (size, note) = store
        .checkpoints()?
        .into_iter()
        .last()
        .filter(|(size, _)| *size > seq)
        .with_context(|| format!("no checkpoint covers seq {seq} yet (the server checkpoints every few seconds and at shutdown)"))?;
    let entry = read_entry(store, seq)?;
    let prev = if seq == 0 {
        [0u8; 32]
    } else {
        read_entry(store, seq - 1)?.hash
    };
    let path = tree.inclusion_proof(seq, size)?;
    let bundle = InclusionBundle::new(&entry, &prev, size, &path, &note)?;
    bundle
        .verify(&key)
        .map_err(|e| anyhow::anyhow!("the log does not prove seq {seq}: {e}"))?;
    Ok(bundle)
}

fn read_entry(store: &dyn LogStore, seq: u64) -> anyhow::Result<Entry> {
    let bytes = store.get(seq)?.with_context(|| format!("no entry {seq}"))?;
    Entry::from_stored(seq, &bytes).map_err(|e| anyhow::anyhow!("entry {seq}: {e}"))
}

fn prove_from_export(file: &Path, seq: u64) -> anyhow::Result<InclusionBundle> {
    // First make sure the export is intact, then read what the proof needs.
    let mut input = open_input(file)?;
    verify_export(&mut input, None, None, &mut |_, _| {})
        .map_err(|p| anyhow::anyhow!("export is not intact at seq {}: {}", p.seq, p.reason))?;
    let mut tree = isnad_journal::merkle::MerkleTree::new();
    let mut entries: Vec<Option<Entry>> = Vec::new();
    let mut key = None;
    let mut best: Option<(u64, String)> = None;
    for (i, line) in open_input(file)?.lines().enumerate() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if i == 0 {
            key = Some(parse_public_key(
                v["public_key"].as_str().unwrap_or_default(),
            )?);
        } else if let Some(size) = v["checkpoint_size"].as_u64() {
            if size > seq && best.is_none() {
                best = Some((size, v["note"].as_str().unwrap_or_default().to_owned()));
            }
        } else {
            let e = parse_entry_line(&line)
                .map_err(|e| anyhow::anyhow!(e))?
                .context("entry line without seq")?;
            let s = e.seq;
            tree.push_leaf_hash(e.leaf());
            entries.push((s + 1 >= seq && s <= seq).then_some(e));
        }
    }
    let key = key.context("export has no header")?;
    let (size, note) =
        best.with_context(|| format!("no checkpoint in the export covers seq {seq}"))?;
    let entry = entries
        .get(seq as usize)
        .cloned()
        .flatten()
        .with_context(|| format!("no entry {seq} in the export"))?;
    let prev = if seq == 0 {
        [0u8; 32]
    } else {
        entries[seq as usize - 1]
            .as_ref()
            .map(|e| e.hash)
            .unwrap_or_default()
    };
    let path = tree.inclusion_proof(seq, size)?;
    let bundle = InclusionBundle::new(&entry, &prev, size, &path, &note)?;
    bundle
        .verify(&key)
        .map_err(|e| anyhow::anyhow!("the export does not prove seq {seq}: {e}"))?;
    Ok(bundle)
}

/// `journal verify-proof`: checks a proof bundle against the node's public key.
pub fn verify_proof(file: &Path, public_key: &Path, json_out: bool) -> anyhow::Result<i32> {
    let key = read_key(public_key)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let bundle: InclusionBundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof bundle", file.display()))?;
    let result: Result<Checkpoint, String> = bundle.verify(&key);
    match result {
        Ok(cp) => {
            if json_out {
                println!(
                    "{}",
                    json!({"ok": true, "seq": bundle.seq, "tree_size": cp.size, "root": B64.encode(cp.root), "origin": cp.origin})
                );
            } else {
                println!(
                    "OK: seq {} is entry {} of the {} entries signed at root {} by {}",
                    bundle.seq,
                    bundle.seq,
                    cp.size,
                    B64.encode(cp.root),
                    cp.origin
                );
            }
            Ok(0)
        }
        Err(reason) => {
            if json_out {
                println!(
                    "{}",
                    json!({"ok": false, "seq": bundle.seq, "reason": reason})
                );
            } else {
                println!("FAILED: proof for seq {}: {reason}", bundle.seq);
            }
            Ok(EXIT_TAMPERED)
        }
    }
}

/// Where `journal tail` reads from.
pub enum TailSource {
    /// A data directory.
    Dir(PathBuf),
    /// An export file.
    Export(PathBuf),
}

/// Calls `f` with every entry in `[from, to)` of `store`, in order; stops at the first entry
/// that does not decode, and says which.
fn each_entry(
    store: &dyn LogStore,
    from: u64,
    to: u64,
    mut f: impl FnMut(Entry),
) -> anyhow::Result<()> {
    let mut err = None;
    store.scan(
        from,
        to,
        &mut |seq, bytes| match Entry::from_stored(seq, bytes) {
            Ok(e) => {
                f(e);
                true
            }
            Err(reason) => {
                err = Some(anyhow::anyhow!("entry {seq}: {reason}"));
                false
            }
        },
    )?;
    err.map_or(Ok(()), Err)
}

/// `journal tail`: the last entries (or from a seq), optionally one kind.
pub fn tail(
    source: TailSource,
    from: Option<u64>,
    count: u64,
    kind: Option<&str>,
    json_out: bool,
) -> anyhow::Result<i32> {
    let mut entries: Vec<Entry> = Vec::new();
    match source {
        TailSource::Dir(dir) => {
            let store = open_store(&dir)?;
            let total = store.next_seq()?;
            let start = from.unwrap_or_else(|| total.saturating_sub(count));
            each_entry(&*store, start, total, |e| entries.push(e))?;
        }
        TailSource::Export(file) => {
            for line in open_input(&file)?.lines().skip(1) {
                if let Some(e) = parse_entry_line(&line?).map_err(|e| anyhow::anyhow!(e))? {
                    entries.push(e);
                }
            }
            let start = from.unwrap_or_else(|| (entries.len() as u64).saturating_sub(count));
            entries.retain(|e| e.seq >= start);
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in entries
        .iter()
        .filter(|e| kind.is_none_or(|k| e.event.kind == k))
    {
        if json_out {
            writeln!(out, "{}", serde_json::to_string(&e.event.to_json())?)?;
        } else {
            let j = e.event.to_json();
            writeln!(
                out,
                "{:>8}  {}  {:<24} team={} actor={} request={}",
                j.seq,
                j.timestamp,
                j.kind,
                j.team.as_deref().unwrap_or("-"),
                j.actor.as_deref().unwrap_or("-"),
                j.request_id.as_deref().unwrap_or("-")
            )?;
        }
    }
    Ok(0)
}

/// `journal replay`: teams, keys, budgets, limits and usage folded from the log alone, as an
/// auditor reconciles billing. Its usage rows are the server's `/v1/usage` with the same
/// filters, to the token and the micro-unit.
pub fn replay(
    data_dir: &Path,
    usage: &crate::admin::UsageQuery,
    json_out: bool,
) -> anyhow::Result<i32> {
    use isnad_pipeline::{
        access::{ledger::Ledger, AccessState},
        Projection as _,
    };
    let store = open_store(data_dir)?;
    let total = store.next_seq()?;
    let mut access = AccessState::default();
    let mut ledger = Ledger::default();
    each_entry(&*store, 0, total, |e| {
        if AccessState::wants(&e.event.kind) {
            access.apply(&e.event);
        }
        if ledger.wants(&e) {
            ledger.apply(&e);
        }
    })?;
    let by_day = match usage.group_by.as_deref() {
        None | Some("total") => false,
        Some("day") => true,
        Some(other) => bail!("--group-by {other}: expected `day` or `total`"),
    };
    let rows = crate::admin::usage_rows(&ledger, usage.team.as_deref(), usage, by_day);
    let budgets: Vec<serde_json::Value> = ledger
        .budgets
        .iter()
        .map(|(scope, b)| {
            let periods: serde_json::Map<String, serde_json::Value> = ledger
                .settled
                .range(format!("{scope}@")..format!("{scope}@\u{10ffff}"))
                .map(|(sp, a)| {
                    let period = sp.rsplit_once('@').map_or("", |p| p.1).to_owned();
                    (
                        period,
                        json!({"tokens": a.tokens, "cost_micros": a.cost_micros}),
                    )
                })
                .collect();
            json!({
                "scope": scope,
                "period": b.period.as_str(),
                "timezone": isnad_pipeline::access::ledger::format_offset(b.offset_min),
                "limit": {"tokens": b.tokens, "cost_micros": b.cost_micros},
                "spent": periods,
            })
        })
        .collect();
    let now = isnad_pipeline::access::now_us();
    let keys: Vec<serde_json::Value> = access
        .keys()
        .map(|k| {
            let mut v = serde_json::to_value(k).unwrap_or_default();
            v["status"] = k.status(now).into();
            v
        })
        .collect();
    let teams: Vec<&isnad_pipeline::access::Team> = access.teams().collect();
    let out = json!({
        "entries": total,
        "teams": teams,
        "keys": keys,
        "budgets": budgets,
        "open_holds": ledger.holds.len(),
        "usage": {"object": "list", "data": rows},
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    writeln!(w, "replayed {total} entries")?;
    writeln!(w, "teams ({}):", teams.len())?;
    for t in &teams {
        writeln!(w, "  {:<24} {}", t.id, t.name)?;
    }
    writeln!(w, "keys ({}):", keys.len())?;
    for k in &keys {
        writeln!(
            w,
            "  {:<16} {:<10} team={} role={} label={}",
            k["id"].as_str().unwrap_or("-"),
            k["status"].as_str().unwrap_or("-"),
            k["team"].as_str().unwrap_or("-"),
            k["role"].as_str().unwrap_or("-"),
            k["label"].as_str().unwrap_or("-"),
        )?;
    }
    writeln!(w, "budgets ({}):", budgets.len())?;
    for b in &budgets {
        writeln!(
            w,
            "  {} per {}: limit {} spent {}",
            b["scope"], b["period"], b["limit"], b["spent"]
        )?;
    }
    writeln!(w, "open holds: {}", ledger.holds.len())?;
    writeln!(w, "usage:")?;
    for r in &rows {
        writeln!(
            w,
            "  {} team={} key={} model={} requests={} prompt={} completion={} cost_micros={}",
            r.get("day").and_then(|d| d.as_str()).unwrap_or("total"),
            r["team"].as_str().unwrap_or("-"),
            r["key"].as_str().unwrap_or("-"),
            r["model"].as_str().unwrap_or("-"),
            r["requests"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["cost_micros"],
        )?;
    }
    Ok(0)
}
