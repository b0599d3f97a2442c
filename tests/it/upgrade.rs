//! Upgrades: a journal written by an earlier release (tests/data/) opens in
//! this one, verifies, reads back, and takes new batches after the old.

use crate::util::Env;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/journal-0.1.0");
const SYNTHETIC: &str = include_str!("../../devices/synthetic.toml");

fn envelopes(env: &Env) -> Vec<(i64, Vec<u8>)> {
    let c = rusqlite::Connection::open_with_flags(
        env.journal(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("journal");
    let mut st = c
        .prepare("SELECT seq, envelope FROM batches WHERE device_id = 'synthetic' ORDER BY seq")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[test]
fn journal_of_release_0_1_0_opens_verifies_and_grows() {
    let env = Env::new("");
    std::fs::create_dir_all(env.path().join("var")).unwrap();
    std::fs::copy(format!("{DATA}/journal.db"), env.journal()).unwrap();
    std::fs::copy(format!("{DATA}/batch.key"), env.key()).unwrap();
    std::fs::set_permissions(env.key(), std::fs::Permissions::from_mode(0o600)).unwrap();
    env.write("devices/synthetic.toml", SYNTHETIC);
    let cfg = env.config();
    let cfg = cfg.to_str().unwrap();

    // The CLI of this release reads it.
    let v = env.cmd(&["journal", "--config", cfg, "verify"]);
    let out = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "journal verify: {out}");
    let stats = env.cmd(&["journal", "--config", cfg, "stats"]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success(), "{text}");
    assert!(
        text.contains("synthetic: 5 batches, seq 0..4 (next 5), 1126 samples"),
        "{text}"
    );

    // Every batch opens with this release's decoder: the old layout.
    let old = env.device_batches("synthetic");
    assert_eq!(old.len(), 5);
    let mut samples = 0;
    for (i, (h, d)) in old.iter().enumerate() {
        assert_eq!(h.seq, i as u64);
        assert_eq!(h.device_id, "synthetic");
        assert_eq!(h.node_id, "vm");
        assert_eq!(d.channels.len(), 8);
        assert_eq!(d.raw.len(), d.timestamps.len() * 8);
        assert_eq!(d.filtered.len(), d.raw.len());
        assert!(d.raw.iter().chain(&d.filtered).all(|v| v.is_finite()));
        assert!(d.timestamps.windows(2).all(|w| w[1] > w[0]));
        samples += d.timestamps.len();
    }
    assert_eq!(samples, 1126);
    let before = envelopes(&env);

    // The daemon of this release opens it (migrating if the schema moved
    // on) and appends: seq continues, the old rows stay byte for byte.
    let d = env.spawn();
    d.wait_streaming(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.terminate(), 0);
    let after = envelopes(&env);
    assert!(after.len() > before.len(), "{} batches", after.len());
    assert_eq!(&after[..before.len()], &before[..], "old batches untouched");
    let seqs: Vec<i64> = after.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (0..after.len() as i64).collect::<Vec<_>>(),
        "gapless seq"
    );
    let new = env.device_batches("synthetic");
    assert_eq!(new[5].0.first_sample, 1126, "sample index continues");
    let v = env.cmd(&["journal", "--config", cfg, "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
