//! `neuroedge journal salvage --out NEW`: the command line over
//! `neuroedge::journal::salvage` (progress on stderr, a summary or JSON on
//! stdout; exit 0 when nothing was lost, 3 when something was).

use neuroedge::crypto::Keyring;
use neuroedge::journal::salvage::{salvage, SalvageReport};
use std::path::Path;

/// Salvage `source` into `out`; returns whether everything was copied.
pub fn run(source: &Path, out: &Path, keys: &Keyring, json: bool) -> Result<bool, String> {
    eprintln!(
        "salvaging {} into {} (the source is only read)",
        source.display(),
        out.display()
    );
    let report = salvage(source, out, keys, |done| {
        eprintln!("  {done} batch rows read");
    })
    .map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_summary(&report);
    }
    Ok(report.complete())
}

fn print_summary(r: &SalvageReport) {
    println!("source check: {}", r.source_check);
    println!("batches copied: {}", r.batches_copied);
    for b in &r.batches_unverified {
        println!(
            "  copied unverified: {} seq {} ({})",
            b.device_id, b.seq, b.reason
        );
    }
    for b in &r.batches_altered {
        println!(
            "LOST altered batch: {} seq {} ({}) [{}]",
            b.device_id, b.seq, b.batch_id, b.reason
        );
    }
    for id in &r.batch_rows_unreadable {
        println!("LOST unreadable batch row id {id}");
    }
    for (a, b) in &r.batch_id_ranges_lost {
        println!("LOST batch rows with ids {a}..={b} (damaged pages; device and seq unknown)");
    }
    println!("audit records copied: {}", r.audit_copied);
    for (a, b) in &r.audit_id_ranges_lost {
        println!("LOST audit records with ids {a}..={b}");
    }
    for (id, d) in &r.devices {
        let missing: Vec<String> = d
            .missing_seqs
            .iter()
            .map(|(a, b)| {
                if a == b {
                    format!("{a}")
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        println!(
            "device {id}: {} batches, next seq {}; seqs not in the new journal: {}",
            d.copied,
            d.next_seq,
            if missing.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} (lost above, or removed earlier by upload retention or the quota: see the audit)",
                    missing.join(", ")
                )
            }
        );
    }
    if r.complete() {
        println!("nothing lost; point [journal] path at {}", r.out.display());
    } else {
        println!(
            "salvaged with losses (listed above); point [journal] path at {} and keep the damaged file",
            r.out.display()
        );
    }
}
