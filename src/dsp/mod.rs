//! Pure DSP core: Butterworth/notch design (bit-compatible with SciPy's
//! `butter(..., output="sos")` and `iirnotch`), a multi-channel SOS filter
//! bank, and a Welch-based band-power / signal-quality extractor.
//!
//! Everything here is synchronous and allocation-free after construction so
//! it can sit directly in the acquisition hot path.

pub mod features;
pub mod filter_bank;
pub mod filter_design;
mod half_sums;

pub use features::{
    Band, ChannelQuality, FeatureConfig, FeatureExtractor, FeatureFrame, QualityStatus,
    QualityThresholds,
};
pub use filter_bank::FilterBank;
pub use filter_design::{design_sos, sosfilt_zi, validate_spec, FilterSpec, Sos};

use std::fmt;

/// Errors for invalid configuration or mis-shaped caller input.
///
/// A plain enum (no `thiserror`) so the module stays dependency-free apart
/// from `realfft` (and `multiversion` for run-time SIMD dispatch).
#[derive(Debug, Clone, PartialEq)]
pub enum DspError {
    /// Sample rate is not a finite positive number.
    InvalidSampleRate(f64),
    /// A cutoff / notch frequency is not finite, `<= 0`, or `>= fs/2`.
    InvalidFrequency {
        /// Which parameter (e.g. `"highpass_hz"`).
        what: &'static str,
        /// Offending value in Hz.
        value: f64,
        /// Nyquist frequency `fs/2` in Hz.
        nyquist: f64,
    },
    /// Band-pass requested with `highpass_hz >= lowpass_hz`.
    InvertedBand {
        /// High-pass edge in Hz.
        highpass_hz: f64,
        /// Low-pass edge in Hz.
        lowpass_hz: f64,
    },
    /// Butterworth order outside `1..=8`.
    InvalidOrder(u32),
    /// Notch quality factor not finite or `<= 0`.
    InvalidNotchQ(f64),
    /// `notch_harmonics` is zero while a notch is configured.
    InvalidNotchHarmonics(u32),
    /// Channel count is zero.
    ZeroChannels,
    /// A slice length does not match the configured shape.
    LengthMismatch {
        /// Which argument is wrong.
        what: &'static str,
        /// Expected length (or multiple).
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// A window/step duration that yields fewer samples than required.
    InvalidDuration {
        /// Which parameter (e.g. `"window_s"`).
        what: &'static str,
        /// Offending value in seconds.
        value: f64,
    },
    /// A feature band with bad edges.
    InvalidBand {
        /// Band name.
        name: String,
        /// Lower edge in Hz.
        lo: f64,
        /// Upper edge in Hz.
        hi: f64,
    },
    /// A quality threshold is not finite / out of range.
    InvalidThreshold {
        /// Which threshold.
        what: &'static str,
        /// Offending value.
        value: f64,
    },
    /// User-supplied SOS row is unusable (`a0 == 0` or non-finite).
    InvalidSos {
        /// Section index.
        section: usize,
    },
    /// Internal design failure (e.g. unmatched complex conjugate); should
    /// not happen for valid Butterworth specs.
    Design(&'static str),
}

impl fmt::Display for DspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DspError::InvalidSampleRate(fs) => {
                write!(f, "sample rate must be finite and > 0 Hz, got {fs}")
            }
            DspError::InvalidFrequency {
                what,
                value,
                nyquist,
            } => write!(
                f,
                "{what} must be finite, > 0 and < Nyquist ({nyquist} Hz), got {value}"
            ),
            DspError::InvertedBand {
                highpass_hz,
                lowpass_hz,
            } => write!(
                f,
                "highpass_hz ({highpass_hz}) must be below lowpass_hz ({lowpass_hz})"
            ),
            DspError::InvalidOrder(o) => write!(f, "filter order must be in 1..=8, got {o}"),
            DspError::InvalidNotchQ(q) => write!(f, "notch_q must be finite and > 0, got {q}"),
            DspError::InvalidNotchHarmonics(h) => {
                write!(f, "notch_harmonics must be >= 1, got {h}")
            }
            DspError::ZeroChannels => write!(f, "channel count must be >= 1"),
            DspError::LengthMismatch {
                what,
                expected,
                actual,
            } => write!(f, "{what}: expected length {expected}, got {actual}"),
            DspError::InvalidDuration { what, value } => write!(
                f,
                "{what} must be finite and long enough for the sample rate, got {value} s"
            ),
            DspError::InvalidBand { name, lo, hi } => write!(
                f,
                "band '{name}' must satisfy 0 <= lo < hi and lo < Nyquist, got [{lo}, {hi})"
            ),
            DspError::InvalidThreshold { what, value } => {
                write!(f, "quality threshold {what} is invalid: {value}")
            }
            DspError::InvalidSos { section } => write!(
                f,
                "SOS section {section} has a0 == 0 or non-finite coefficients"
            ),
            DspError::Design(msg) => write!(f, "filter design failed: {msg}"),
        }
    }
}

impl std::error::Error for DspError {}

#[cfg(test)]
mod reference_tests;
