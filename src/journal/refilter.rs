//! Reproduce the filtered signal of batches that do not store it
//! (`[journal] store = ["raw"]`, batch format v2).
//!
//! The device's filter chain is causal and deterministic: it starts at the
//! first sample of a run (`filter.run_start`, its initial state seeded from
//! that sample) and filters every sample of the device after it, in order.
//! Running the same chain (rebuilt from the batch's `filter` map, with the
//! same code) over the journaled raw samples from `run_start` gives the live
//! output bit for bit. So a reader that needs `filtered` for a batch in the
//! middle of a run first runs the chain over the run's earlier batches (the
//! *warm-up*), then over the batch itself.
//!
//! The result is only approximate, and a warning says so once per device,
//! when the journal no longer holds what the chain saw: the run's first
//! batches were deleted (uploaded and past `retain_uploaded`, or dropped by
//! the quota), a batch was dropped before it reached the journal (a
//! `journal` gap), or a batch of the run cannot be opened. The difference
//! decays with the filter's impulse response (seconds for EEG high-passes).

use super::reader::{open_row, ReadBatch, Selection};
use super::{Journal, JournalError};
use crate::batch::{BatchData, BatchHeader, FilterDescription, GapCause};
use crate::crypto::Keyring;
use crate::dsp::filter_bank::FilterBank;
use crate::dsp::filter_design::FilterSpec;
use std::collections::HashMap;

/// One device's chain as it stands after the batches run through it.
struct Chain {
    bank: FilterBank,
    filter: FilterDescription,
    sample_rate: f64,
    channels: usize,
    /// The seq the chain expects next (it has filtered every earlier batch
    /// of the run that the journal holds).
    next_seq: u64,
}

impl Chain {
    fn new(b: &BatchData, next_seq: u64) -> Result<Chain, String> {
        let defaults = crate::config::FiltersSection::default();
        let f = &b.filter;
        let spec = FilterSpec {
            highpass_hz: f.highpass_hz,
            lowpass_hz: f.lowpass_hz,
            order: f.order.unwrap_or(defaults.order),
            notch_hz: f.notch_hz,
            notch_harmonics: f.notch_harmonics.unwrap_or(defaults.notch_harmonics),
            notch_q: f.notch_q.unwrap_or(defaults.notch_q),
        };
        let bank = FilterBank::new(&spec, b.sample_rate, b.n_channels())
            .map_err(|e| format!("cannot rebuild the batch's filter chain: {e}"))?;
        Ok(Chain {
            bank,
            filter: b.filter.clone(),
            sample_rate: b.sample_rate,
            channels: b.n_channels(),
            next_seq,
        })
    }

    /// Whether `b` (seq `seq`) continues this chain's run.
    fn continues(&self, b: &BatchData, seq: u64) -> bool {
        self.next_seq == seq
            && self.filter == b.filter
            && self.sample_rate == b.sample_rate
            && self.channels == b.n_channels()
    }

    /// Filter `raw` into a new vector.
    fn run(&mut self, raw: &[f32]) -> Result<Vec<f32>, String> {
        let mut out = vec![0.0f32; raw.len()];
        self.bank
            .process(raw, &mut out)
            .map_err(|e| format!("cannot filter the batch: {e}"))?;
        Ok(out)
    }
}

/// A batch dropped before the journal (its samples went through the
/// chain but are not in the journal) just before `b`.
fn journal_gap(b: &BatchData) -> bool {
    b.gaps
        .iter()
        .any(|g| g.cause == GapCause::Journal && g.before_sample == b.first_sample)
}

/// The reader's per-device chains.
#[derive(Default)]
pub struct Refilter {
    chains: HashMap<String, Chain>,
    /// Devices already warned about (one warning each).
    warned: Vec<String>,
}

impl Refilter {
    /// Fill `data.filtered` when the batch does not store it. An error is
    /// the reason the batch cannot be reproduced (the reader reports the
    /// batch as unreadable).
    pub fn fill(
        &mut self,
        j: &Journal,
        keys: &Keyring,
        header: &BatchHeader,
        data: &mut BatchData,
    ) -> Result<(), String> {
        if data.filtered.len() == data.raw.len() {
            return Ok(());
        }
        if data.filter.is_identity() {
            data.filtered = data.raw.clone();
            return Ok(());
        }
        let seq = header.seq;
        let continues = self
            .chains
            .get(&header.device_id)
            .is_some_and(|c| c.continues(data, seq));
        if !continues {
            let chain = self.warm_up(j, keys, header, data)?;
            self.chains.insert(header.device_id.clone(), chain);
        } else if journal_gap(data) {
            self.warn(
                &header.device_id,
                seq,
                "a batch before it never reached the journal",
            );
        }
        let chain = self
            .chains
            .get_mut(&header.device_id)
            .ok_or("no filter chain")?;
        data.filtered = chain.run(&data.raw)?;
        chain.next_seq = seq + 1;
        Ok(())
    }

    /// A chain that has run over the journaled batches of `data`'s run
    /// before it (seq order), ready for `data`.
    fn warm_up(
        &mut self,
        j: &Journal,
        keys: &Keyring,
        header: &BatchHeader,
        data: &BatchData,
    ) -> Result<Chain, String> {
        let device = &header.device_id;
        let run_start = data.filter.run_start.unwrap_or(data.first_sample);
        let first = j
            .first_batch_from_sample(device, run_start, header.seq)
            .map_err(|e| e.to_string())?;
        let Some((from_seq, from_sample)) = first else {
            // `data` is the run's first journaled batch.
            if data.first_sample != run_start || journal_gap(data) {
                self.warn(
                    device,
                    header.seq,
                    "the start of its filter run is not in the journal",
                );
            }
            return Chain::new(data, header.seq);
        };
        if from_sample != run_start {
            self.warn(
                device,
                header.seq,
                "the start of its filter run is not in the journal",
            );
        }
        let mut chain: Option<Chain> = None;
        let sel = Selection {
            device: Some(device.clone()),
            seqs: from_seq..=header.seq - 1,
            time: None,
            with_filtered: false,
        };
        for row in j.rows(sel) {
            let row = row.map_err(|e: JournalError| e.to_string())?;
            let seq = row.seq;
            let ReadBatch::Opened { data: earlier, .. } = open_row(keys, row, None) else {
                self.warn(device, seq, "a batch of its filter run cannot be opened");
                continue;
            };
            if earlier.filter != data.filter {
                // Not the same run after all (a changed chain): start over.
                chain = None;
                continue;
            }
            let c = match &mut chain {
                Some(c) => c,
                None => chain.insert(Chain::new(&earlier, seq)?),
            };
            if c.next_seq != seq || journal_gap(&earlier) {
                self.warn(device, seq, "a batch of its filter run is missing");
            }
            c.run(&earlier.raw)?;
            c.next_seq = seq + 1;
        }
        let mut chain = match chain {
            Some(c) => c,
            None => Chain::new(data, header.seq)?,
        };
        if chain.next_seq != header.seq || journal_gap(data) {
            self.warn(device, header.seq, "a batch of its filter run is missing");
        }
        chain.next_seq = header.seq;
        Ok(chain)
    }

    fn warn(&mut self, device: &str, seq: u64, why: &str) {
        if self.warned.iter().any(|d| d == device) {
            return;
        }
        self.warned.push(device.to_string());
        tracing::warn!(
            device,
            seq,
            "the filtered signal reproduced from raw is approximate from batch {seq} on: {why} \
             (the difference decays with the filter's impulse response)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{seal, BatchFormat, Gap, SealParams};
    use crate::crypto::BatchKey;
    use crate::journal::config::SyncMode;

    const CH: usize = 3;
    const RATE: f64 = 250.0;
    const FRAMES: usize = 50;

    fn spec() -> FilterSpec {
        FilterSpec {
            highpass_hz: Some(1.0),
            lowpass_hz: Some(40.0),
            order: 4,
            notch_hz: Some(50.0),
            notch_harmonics: 2,
            notch_q: 25.0,
        }
    }

    /// `n` batches of one run starting at `run_start`, filtered live in
    /// blocks of 7 frames (not aligned with the batches), as the pipeline
    /// does; returns the batches with `filtered` and the live output.
    fn run(n: usize, run_start: u64) -> Vec<BatchData> {
        let total = n * FRAMES;
        let raw: Vec<f32> = (0..total * CH)
            .map(|i| {
                let (k, c) = ((i / CH) as f64, (i % CH) as f64);
                (100.0 * c + 30.0 * (k * 0.07 * (c + 1.0)).sin() + (k * 1.3).cos() * 5.0) as f32
            })
            .collect();
        let mut bank = FilterBank::new(&spec(), RATE, CH).unwrap();
        let mut filtered = vec![0.0f32; raw.len()];
        for (i, o) in raw.chunks(7 * CH).zip(filtered.chunks_mut(7 * CH)) {
            bank.process(i, o).unwrap();
        }
        let s = spec();
        let filter = FilterDescription {
            highpass_hz: s.highpass_hz,
            lowpass_hz: s.lowpass_hz,
            order: Some(s.order),
            notch_hz: s.notch_hz,
            notch_harmonics: Some(s.notch_harmonics),
            notch_q: Some(s.notch_q),
            run_start: Some(run_start),
        };
        (0..n)
            .map(|b| {
                let span = b * FRAMES * CH..(b + 1) * FRAMES * CH;
                BatchData {
                    device_id: "d".into(),
                    sample_rate: RATE,
                    channels: (0..CH).map(|c| format!("c{c}")).collect(),
                    units: "uV".into(),
                    first_sample: run_start + (b * FRAMES) as u64,
                    timestamps: (0..FRAMES)
                        .map(|k| 1000.0 + (b * FRAMES + k) as f64 / RATE)
                        .collect(),
                    raw: raw[span.clone()].to_vec(),
                    filtered: filtered[span].to_vec(),
                    filter: filter.clone(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// A journal holding `batches` (seqs from `seq0`) without their
    /// filtered signal.
    fn journal(batches: &[BatchData], seq0: u64) -> (tempfile::TempDir, Journal, Keyring) {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(&d.path().join("j.db"), SyncMode::Normal).unwrap();
        let key = BatchKey::from_bytes(&[9; 32]);
        for (i, b) in batches.iter().enumerate() {
            let seq = seq0 + i as u64;
            let stored = BatchData {
                filtered: Vec::new(),
                ..b.clone()
            };
            let p = SealParams {
                batch_id: format!("b{seq}"),
                site_id: "s",
                node_id: "n",
                seq,
                created_at: 0.0,
                compress: true,
                format: BatchFormat::V2,
            };
            let (env, h) = seal(&key, &p, &stored).unwrap();
            j.insert_row_for_tests(&h, &env);
        }
        (d, j, Keyring::new(BatchKey::from_bytes(&[9; 32])))
    }

    fn read(j: &Journal, keys: &Keyring, sel: Selection) -> Vec<BatchData> {
        j.read_batches(keys, sel)
            .map(|r| match r.unwrap() {
                ReadBatch::Opened { data, .. } => data,
                ReadBatch::Unreadable(u) => panic!("{}", u.reason),
            })
            .collect()
    }

    #[test]
    fn reproduces_the_live_filtered_signal_bit_for_bit() {
        let live = run(8, 40);
        let (_d, j, keys) = journal(&live, 0);
        // Without asking: the batches come as stored, without filtered.
        let stored = read(&j, &keys, Selection::device("d"));
        assert!(stored
            .iter()
            .all(|b| b.filtered.is_empty() && !b.raw.is_empty()));
        // The whole run.
        let sel = Selection {
            with_filtered: true,
            ..Selection::device("d")
        };
        let got = read(&j, &keys, sel.clone());
        assert_eq!(got.len(), 8);
        for (g, l) in got.iter().zip(&live) {
            assert_eq!(g.filtered, l.filtered, "batch at {}", l.first_sample);
        }
        // From the middle of the run: the earlier batches warm the chain up.
        let got = read(
            &j,
            &keys,
            Selection {
                seqs: 5..=6,
                ..sel.clone()
            },
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].filtered, live[5].filtered);
        assert_eq!(got[1].filtered, live[6].filtered);
        // A time range: trimmed after filtering.
        let t0 = live[3].timestamps[10];
        let t1 = live[4].timestamps[5];
        let got = read(
            &j,
            &keys,
            Selection {
                time: Some((t0, t1)),
                ..sel
            },
        );
        let got: Vec<f32> = got.iter().flat_map(|b| b.filtered.clone()).collect();
        let mut want = live[3].filtered[10 * CH..].to_vec();
        want.extend_from_slice(&live[4].filtered[..6 * CH]);
        assert_eq!(got, want);
    }

    #[test]
    fn a_later_run_restarts_the_chain_and_a_missing_start_is_approximate() {
        let mut batches = run(3, 0);
        // A second run (a restart of the device) later in the journal.
        batches.extend(run(3, 10_000));
        let (_d, j, keys) = journal(&batches, 0);
        let sel = Selection {
            with_filtered: true,
            ..Selection::device("d")
        };
        let got = read(&j, &keys, sel.clone());
        for (g, l) in got.iter().zip(&batches) {
            assert_eq!(g.filtered, l.filtered);
        }
        let got = read(
            &j,
            &keys,
            Selection {
                seqs: 4..=5,
                ..sel.clone()
            },
        );
        assert_eq!(got[1].filtered, batches[5].filtered);

        // The run's first two batches deleted: the reproduction starts
        // late, approximate at first, and converges on the live signal.
        let long = run(40, 0);
        let (_d, j, keys) = journal(&long[2..], 2);
        let got = read(&j, &keys, sel);
        assert_eq!(got.len(), 38);
        assert_ne!(got[0].filtered, long[2].filtered);
        let last = got.last().unwrap();
        let err = last
            .filtered
            .iter()
            .zip(&long[39].filtered)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-3, "still {err} uV apart after 7 s");
    }

    #[test]
    fn a_journal_gap_or_an_identity_chain() {
        // A batch dropped before the journal: the next one carries a
        // `journal` gap; reading goes on (approximate, warned).
        let mut live = run(4, 0);
        live.remove(2);
        let g = Gap {
            before_sample: live[2].first_sample,
            missing: FRAMES as u64,
            cause: GapCause::Journal,
        };
        live[2].gaps.push(g);
        let (_d, j, keys) = journal(&live, 0);
        let sel = Selection {
            with_filtered: true,
            ..Selection::device("d")
        };
        let got = read(&j, &keys, sel.clone());
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].filtered, live[1].filtered);
        assert_eq!(got[2].filtered.len(), live[2].raw.len());

        // No filter: filtered is raw.
        let mut plain = run(2, 0);
        for b in &mut plain {
            b.filter = FilterDescription::default();
        }
        let (_d, j, keys) = journal(&plain, 0);
        for b in read(&j, &keys, sel) {
            assert_eq!(b.filtered, b.raw);
        }
    }
}
