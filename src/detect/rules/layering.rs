//! layering (`[layering]`, 分层挂单): spoofing's pattern spread over a
//! ladder: the cancelled spoof orders stood at `min_levels_behind` or more
//! distinct price levels behind the touch. The Sarao shape: four to six
//! large orders one tick apart behind the touch, held one to a few seconds,
//! then all cancelled while the group trades the other side.
//!
//! The precise definition is the shared pattern's (`spoof_pattern.rs`);
//! this file owns the parameters and their defaults. The window is twice
//! spoofing's because layers are held for seconds, not fractions of one
//! (institutions that rest for tens of seconds stay outside it):
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `window_ms` | 10000 | the sliding window |
//! | `size_pct` | 50 | spoof quantity against the side's best-5 depth before the first spoof order, percent |
//! | `cancel_pct` | 80 | share of the spoof quantity cancelled, percent |
//! | `one_sided_k` | 4 | spoof quantity against the group's new quantity on the other side |
//! | `min_opposite_exec_qty` | 1 | the group's executed quantity on the other side |
//! | `min_levels_behind` | 3 | distinct cancelled price levels behind the touch, at least |
//! | `min_orders` | 3 | spoof orders (partly) cancelled, at least |
//! | `max_keys` | 262144 | hot keys: those with a counted cancel in the window (limit: a key that would turn hot is refused and cannot alert, counted) |
//! | `max_entries` | 2097152 | window entries (limit: the oldest expire early, counted) |

use super::params::MS;
use super::spoof_pattern::{Levels, MAX_LEVELS, PatternParams, SharedRaw};
use crate::checkpoint::codec::Writer;
use crate::config::Problems;
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    pub enabled: Option<bool>,
    pub window_ms: Option<Spanned<i64>>,
    pub size_pct: Option<Spanned<i64>>,
    pub cancel_pct: Option<Spanned<i64>>,
    pub one_sided_k: Option<Spanned<i64>>,
    pub min_opposite_exec_qty: Option<Spanned<i64>>,
    pub min_levels_behind: Option<Spanned<i64>>,
    pub min_orders: Option<Spanned<i64>>,
    pub max_keys: Option<Spanned<i64>>,
    pub max_entries: Option<Spanned<i64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params(pub PatternParams);

impl Default for Params {
    fn default() -> Params {
        Params(PatternParams {
            window_ns: 10_000 * MS,
            size_pct: 50,
            cancel_pct: 80,
            one_sided_k: 4,
            min_opposite_exec_qty: 1,
            levels: Levels::AtLeast(3),
            min_orders: 3,
            max_keys: 1 << 18,
            max_entries: 1 << 21,
        })
    }
}

impl Params {
    /// The canonical bytes (part of the checkpoint identity).
    pub fn encode(&self, w: &mut Writer<'_>) {
        self.0.encode(w);
    }

    /// The validated parameters (`None` when `enabled = false`); every
    /// problem goes to `f`, with its line.
    pub fn validate(raw: RawParams, f: &mut Problems<'_>) -> Option<Params> {
        if !raw.enabled.unwrap_or(crate::detect::views::BOOK_RULES_ON_BY_DEFAULT) {
            return None;
        }
        let d = Params::default().0;
        let max_levels = match d.levels {
            Levels::AtMost(n) | Levels::AtLeast(n) => n as i64,
        };
        let shared = SharedRaw {
            window_ms: raw.window_ms,
            size_pct: raw.size_pct,
            cancel_pct: raw.cancel_pct,
            one_sided_k: raw.one_sided_k,
            min_opposite_exec_qty: raw.min_opposite_exec_qty,
            min_orders: raw.min_orders,
            max_keys: raw.max_keys,
            max_entries: raw.max_entries,
        };
        let levels = |f: &mut Problems<'_>| {
            Levels::AtLeast(
                f.int(raw.min_levels_behind, "min_levels_behind", 1..=MAX_LEVELS as i64 - 1, max_levels) as u32
            )
        };
        Some(Params(PatternParams::validate(shared, &d, levels, f)))
    }
}

/// The rule's state is the spoof stream's (`detect::views::spoof`, shared
/// with spoofing): the rule emits what the stream found for it.
pub struct Layering {
    pub params: Params,
}

impl Layering {
    pub fn new(params: Params) -> Layering {
        Layering { params }
    }
}
