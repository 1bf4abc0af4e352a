//! The last trade price of each instrument: the smallest shared view, kept
//! only when an enabled rule reads it (`Reads::LAST_TRADE`). A rule sees the
//! price before its record (`Seen::last_trade`).

use crate::checkpoint::codec::{DecodeError, Reader, Writer};
use crate::detect::state::cow::CowTable;
use crate::event::{Event, Kind, Px};

/// No trade yet.
const NONE: Px = Px::MIN;

pub struct LastTrade {
    table: CowTable<Px>,
    /// Trades of instruments past the table's limit, not kept.
    pub refused: u64,
}

pub type Image = Vec<(u32, Px)>;

impl LastTrade {
    pub const ID: u16 = 0x8001;
    pub const VERSION: u16 = 1;

    pub fn new(instruments: usize) -> LastTrade {
        LastTrade { table: CowTable::new(instruments, NONE), refused: 0 }
    }

    /// The price before `event`, then `event` applied.
    #[inline(always)]
    pub fn update(&mut self, event: &Event) -> Option<Px> {
        let before = self.table.get(event.instrument);
        if event.kind == Kind::Trade && !self.table.set(event.instrument, event.price) {
            self.refused += 1;
        }
        (before != NONE).then_some(before)
    }

    pub fn grew(&self) -> u64 {
        self.table.grew
    }

    pub fn begin_snapshot(&mut self, image: Image) {
        self.table.begin_snapshot(image);
    }

    pub fn copy_slice(&mut self, max: usize) -> Option<Image> {
        self.table.copy_slice(max)
    }

    pub fn encode(image: &Image, w: &mut Writer<'_>) {
        w.u64(image.len() as u64);
        for &(instrument, px) in image {
            w.u32(instrument);
            w.i64(px);
        }
    }

    pub fn restore(&mut self, r: &mut Reader<'_>, keep: &dyn Fn(u64) -> bool) -> Result<(), DecodeError> {
        for _ in 0..r.count(12)? {
            let (instrument, px) = (r.u32()?, r.i64()?);
            if px == NONE || self.table.get(instrument) != NONE {
                return Err(DecodeError(format!("last trade of instrument {instrument}: bad or twice")));
            }
            if keep(instrument as u64) && !self.table.set(instrument, px) {
                return Err(DecodeError(format!("instrument {instrument} past the table's limit")));
            }
        }
        Ok(())
    }
}
