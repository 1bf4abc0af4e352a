//! A Parquet table written row by row into typed column buffers; every
//! `ROW_GROUP_ROWS` rows the buffers go to the table's writer thread,
//! which encodes the row group's columns on several threads at once (each
//! into memory) and splices them into the file while the caller fills the
//! next group. Buffers come back for reuse, so a table's memory is two row
//! groups whatever the row count.
//!
//! Names (accounts, instruments, groups, kinds, sides, fates) are
//! dictionary columns: the caller hands a small integer id with its text,
//! and this module writes the dictionary page and the bit-packed ids
//! itself. The parquet crate's own dictionary encoder hashes every value's
//! bytes again (with statistics, it also compares every value's bytes with
//! the running min and max): that was half the export's time. Other
//! columns go through the parquet crate's column writer, snappy-compressed;
//! nearly sorted integers are delta encoded.

use bytes::Bytes;
use parquet::basic::{
    Compression, DecimalType, Encoding, IntType, LogicalType, PageType, Repetition, Type as PhysicalType,
};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::{ColumnCloseResult, get_column_writer, get_typed_column_writer_mut};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::metadata::{ColumnChunkMetaData, PageEncodingStats};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr};
use parquet::file::statistics::Statistics;
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{ColumnDescPtr, ColumnPath, Type};
use rustc_hash::FxHashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Rows per row group: a million rows of a day's records is about 130 MB
/// of buffers, and DuckDB reads row groups in parallel.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// Values per data page of a dictionary column.
const DICT_PAGE_VALUES: usize = 1 << 16;

/// A column's type as a reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// UINT_64 (DuckDB: UBIGINT).
    U64,
    I64,
    F64,
    Bool,
    /// UTF-8 text.
    Str,
    /// A price in 1/10,000: DECIMAL(18,4), exact.
    Price,
}

/// How a column is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    /// Dictionary: repeated values. For text, this module's own dictionary
    /// writer (ids from the caller, or interned here by `str`); for
    /// numbers, the parquet crate's.
    Dict,
    /// DELTA_BINARY_PACKED, no dictionary: nearly sorted integers (lines,
    /// seqs, event times, order ids). A dictionary would hash every one of
    /// them only to be abandoned.
    Delta,
    /// Plain, no dictionary: unique values in no order (lifetimes,
    /// notionals), and free text (reasons, raw records, evidence).
    Plain,
}

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub ty: Ty,
    pub nullable: bool,
    pub enc: Enc,
}

pub fn col(name: &str, ty: Ty, nullable: bool) -> Column {
    Column { name: name.to_string(), ty, nullable, enc: Enc::Dict }
}

impl Column {
    pub fn enc(mut self, enc: Enc) -> Column {
        self.enc = enc;
        self
    }

    fn names(&self) -> bool {
        self.ty == Ty::Str && self.enc == Enc::Dict
    }
}

enum Values {
    I64(Vec<i64>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    /// Free text.
    Text(Vec<ByteArray>),
    /// Dictionary ids of a names column.
    Ids(Vec<u32>),
}

struct Buffer {
    values: Values,
    /// Definition levels (1 present, 0 null); kept for nullable columns only.
    defs: Vec<i16>,
    nullable: bool,
}

impl Buffer {
    fn clear(&mut self) {
        match &mut self.values {
            Values::I64(v) => v.clear(),
            Values::F64(v) => v.clear(),
            Values::Bool(v) => v.clear(),
            Values::Text(v) => v.clear(),
            Values::Ids(v) => v.clear(),
        }
        self.defs.clear();
    }
}

/// A names column's dictionary: id -> text. Ids are the caller's (dense
/// from 0), so the table sees each id once per distinct name.
#[derive(Clone, Default)]
struct Names {
    values: Vec<Option<ByteArray>>,
    /// A bit per id in `values`.
    known: Vec<u64>,
    /// For `Table::str` on a names column: text -> id.
    interned: FxHashMap<Box<[u8]>, u32>,
}

/// One row group on its way to the writer thread.
struct Group {
    buffers: Vec<Buffer>,
    /// Each names column's dictionary as it stood (None for other columns).
    names: Vec<Option<Arc<[Option<ByteArray>]>>>,
}

/// One Parquet file being written.
pub struct Table {
    path: PathBuf,
    columns: Vec<Column>,
    buffers: Vec<Buffer>,
    names: Vec<Names>,
    /// Set when a names column learned a name since the last row group.
    names_changed: bool,
    names_sent: Vec<Option<Arc<[Option<ByteArray>]>>>,
    to_writer: Option<SyncSender<Group>>,
    /// Emptied buffers coming back from the writer.
    recycled: Receiver<Vec<Buffer>>,
    writer: Option<JoinHandle<Result<File, String>>>,
    /// Rows a fresh set of buffers is allocated for.
    capacity: usize,
    /// Rows in the buffers, and written in all.
    pending: usize,
    rows: u64,
    /// The column the next value goes to (rows are written left to right).
    next: usize,
}

fn err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: cannot write Parquet: {e}", path.display())
}

impl Table {
    pub fn create(path: &Path, columns: Vec<Column>) -> Result<Table, String> {
        Table::create_sized(path, 0, columns)
    }

    /// A table of about `rows` rows: its buffers are allocated for them
    /// (up to a row group) at the start, not grown row by row.
    pub fn create_sized(path: &Path, rows: usize, columns: Vec<Column>) -> Result<Table, String> {
        let fields = columns
            .iter()
            .map(|c| {
                let physical = match c.ty {
                    Ty::U64 | Ty::I64 | Ty::Price => PhysicalType::INT64,
                    Ty::F64 => PhysicalType::DOUBLE,
                    Ty::Bool => PhysicalType::BOOLEAN,
                    Ty::Str => PhysicalType::BYTE_ARRAY,
                };
                let logical = match c.ty {
                    Ty::U64 => Some(LogicalType::Integer(IntType { bit_width: 64, is_signed: false })),
                    Ty::Str => Some(LogicalType::String),
                    Ty::Price => Some(LogicalType::Decimal(DecimalType { scale: 4, precision: 18 })),
                    _ => None,
                };
                let mut b = Type::primitive_type_builder(&c.name, physical)
                    .with_repetition(if c.nullable { Repetition::OPTIONAL } else { Repetition::REQUIRED })
                    .with_logical_type(logical);
                if c.ty == Ty::Price {
                    b = b.with_precision(18).with_scale(4);
                }
                b.build().map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(path, e))?;
        let schema = Type::group_type_builder("schema").with_fields(fields).build().map_err(|e| err(path, e))?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            // Min/max per column chunk (row group) is what readers prune by.
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(format!("tapewatch {}", env!("CARGO_PKG_VERSION")));
        for c in &columns {
            let path = ColumnPath::from(c.name.as_str());
            match c.enc {
                Enc::Dict => {}
                Enc::Delta => {
                    props = props
                        .set_column_dictionary_enabled(path.clone(), false)
                        .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
                }
                Enc::Plain => props = props.set_column_dictionary_enabled(path, false),
            }
        }
        let props = Arc::new(props.build());
        let file = crate::outputs::create(path).map_err(|e| err(path, e))?;
        let writer = SerializedFileWriter::new(file, Arc::new(schema), props.clone()).map_err(|e| err(path, e))?;
        // A rendezvous: the caller fills one group while the writer encodes
        // the other.
        let (to_writer, groups) = sync_channel::<Group>(0);
        let (give_back, recycled) = sync_channel::<Vec<Buffer>>(2);
        let at = path.to_path_buf();
        // Delta integer columns are written here; which ones, and signed or not.
        let kinds: Vec<Option<bool>> =
            columns.iter().map(|c| (c.enc == Enc::Delta && c.ty != Ty::F64).then_some(c.ty == Ty::U64)).collect();
        let writer = std::thread::Builder::new()
            .name("export-writer".into())
            .spawn(move || write_groups(writer, props, kinds, groups, give_back, &at))
            .map_err(|e| err(path, e))?;
        Ok(Table {
            path: path.to_path_buf(),
            buffers: empty_buffers(&columns, rows.min(ROW_GROUP_ROWS)),
            capacity: rows.min(ROW_GROUP_ROWS),
            names: vec![Names::default(); columns.len()],
            names_changed: true,
            names_sent: vec![None; columns.len()],
            columns,
            to_writer: Some(to_writer),
            recycled,
            writer: Some(writer),
            pending: 0,
            rows: 0,
            next: 0,
        })
    }

    #[inline]
    fn slot(&mut self) -> &mut Buffer {
        let i = self.next;
        assert!(i < self.buffers.len(), "{}: more values than columns in a row", self.path.display());
        self.next += 1;
        let b = &mut self.buffers[i];
        if b.nullable {
            b.defs.push(1);
        }
        b
    }

    fn wrong(&self, what: &str) -> ! {
        let c = &self.columns[self.next - 1];
        panic!("{}: column {} is {:?} ({:?}), not {what}", self.path.display(), c.name, c.ty, c.enc)
    }

    #[inline]
    pub fn u64(&mut self, v: u64) {
        // UINT_64 is stored as the same 64 bits in an INT64.
        self.i64(v as i64)
    }

    #[inline]
    pub fn i64(&mut self, v: i64) {
        match &mut self.slot().values {
            Values::I64(values) => values.push(v),
            _ => self.wrong("an integer"),
        }
    }

    pub fn f64(&mut self, v: f64) {
        match &mut self.slot().values {
            Values::F64(values) => values.push(v),
            _ => self.wrong("a double"),
        }
    }

    pub fn bool(&mut self, v: bool) {
        match &mut self.slot().values {
            Values::Bool(values) => values.push(v),
            _ => self.wrong("a boolean"),
        }
    }

    /// A name in a names column by the caller's id for it (dense from 0;
    /// the same id must always come with the same text).
    #[inline]
    pub fn name(&mut self, id: u32, text: &ByteArray) {
        let i = self.next;
        match &mut self.slot().values {
            Values::Ids(values) => values.push(id),
            _ => self.wrong("a name"),
        }
        // A bit per id known: a few kB to check per value, not the texts.
        let names = &mut self.names[i];
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        if names.known.get(word).is_none_or(|w| w & bit == 0) {
            if names.known.len() <= word {
                names.known.resize(word + 1, 0);
            }
            names.known[word] |= bit;
            if names.values.len() <= id as usize {
                names.values.resize(id as usize + 1, None);
            }
            names.values[id as usize] = Some(text.clone());
            self.names_changed = true;
        }
    }

    /// Text: free text, or a name interned here (a names column fed only
    /// through this; the small tables).
    pub fn str(&mut self, v: &str) {
        let i = self.next;
        if self.columns.get(i).is_some_and(Column::names) {
            let names = &mut self.names[i];
            let id = match names.interned.get(v.as_bytes()) {
                Some(&id) => id,
                None => {
                    let id = names.values.len() as u32;
                    names.interned.insert(v.as_bytes().into(), id);
                    id
                }
            };
            return self.name(id, &ByteArray::from(v));
        }
        match &mut self.slot().values {
            Values::Text(values) => values.push(ByteArray::from(v)),
            _ => self.wrong("text"),
        }
    }

    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.u64(v),
            None => self.null(),
        }
    }

    pub fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.i64(v),
            None => self.null(),
        }
    }

    pub fn opt_name(&mut self, v: Option<(u32, &ByteArray)>) {
        match v {
            Some((id, text)) => self.name(id, text),
            None => self.null(),
        }
    }

    #[inline]
    pub fn null(&mut self) {
        let i = self.next;
        assert!(self.columns[i].nullable, "column {} is not nullable", self.columns[i].name);
        self.next += 1;
        self.buffers[i].defs.push(0);
    }

    /// Ends a row; every column must have had a value.
    #[inline]
    pub fn end_row(&mut self) -> Result<(), String> {
        assert_eq!(self.next, self.columns.len(), "{}: a row short of values", self.path.display());
        self.next = 0;
        self.pending += 1;
        if self.pending >= ROW_GROUP_ROWS { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.pending == 0 {
            return Ok(());
        }
        if self.names_changed {
            for (i, names) in self.names.iter().enumerate() {
                if self.columns[i].names() {
                    self.names_sent[i] = Some(names.values.as_slice().into());
                }
            }
            self.names_changed = false;
        }
        let fresh = match self.recycled.try_recv() {
            Ok(buffers) => buffers,
            Err(_) => empty_buffers(&self.columns, self.capacity),
        };
        let full = std::mem::replace(&mut self.buffers, fresh);
        let group = Group { buffers: full, names: self.names_sent.clone() };
        let sent = self.to_writer.as_ref().expect("a table is written until finished").send(group);
        if sent.is_err() {
            // The writer stopped on an error: it is in its result.
            return Err(self.join().err().unwrap_or_else(|| err(&self.path, "the writer stopped")));
        }
        self.rows += self.pending as u64;
        self.pending = 0;
        Ok(())
    }

    fn join(&mut self) -> Result<File, String> {
        self.to_writer = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(err(&self.path, "the writer thread panicked")),
            None => Err(err(&self.path, "written already")),
        }
    }

    /// Writes the last row group and the footer; returns the rows written.
    pub fn finish(mut self) -> Result<u64, String> {
        self.flush()?;
        let file = self.join()?;
        file.sync_all().map_err(|e| err(&self.path, e))?;
        Ok(self.rows)
    }
}

fn empty_buffers(columns: &[Column], rows: usize) -> Vec<Buffer> {
    columns
        .iter()
        .map(|c| Buffer {
            values: match c.ty {
                Ty::U64 | Ty::I64 | Ty::Price => Values::I64(Vec::with_capacity(rows)),
                Ty::F64 => Values::F64(Vec::with_capacity(rows)),
                Ty::Bool => Values::Bool(Vec::with_capacity(rows)),
                Ty::Str if c.names() => Values::Ids(Vec::with_capacity(rows)),
                // Free text is mostly null (reasons, raw records).
                Ty::Str => Values::Text(Vec::new()),
            },
            defs: Vec::with_capacity(if c.nullable { rows } else { 0 }),
            nullable: c.nullable,
        })
        .collect()
}

/// Threads that encode one row group's columns.
fn encoders() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)
}

/// One column chunk encoded into memory.
type Chunk = (Bytes, ColumnCloseResult);

/// The writer thread: each row group as it comes (its columns encoded in
/// parallel, then spliced into the file in order), then the footer.
fn write_groups(
    mut writer: SerializedFileWriter<File>,
    props: WriterPropertiesPtr,
    delta: Vec<Option<bool>>,
    groups: Receiver<Group>,
    give_back: SyncSender<Vec<Buffer>>,
    path: &Path,
) -> Result<File, String> {
    let columns = delta.len();
    let descrs: Vec<ColumnDescPtr> = (0..columns).map(|i| writer.schema_descr().column(i)).collect();
    for mut group in groups {
        let next = AtomicUsize::new(0);
        let chunks: Vec<Mutex<Option<Result<Chunk, String>>>> = (0..columns).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..encoders().min(columns) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= columns {
                            break;
                        }
                        let b = &group.buffers[i];
                        let chunk = match (&b.values, &group.names[i], delta[i]) {
                            (Values::Ids(ids), Some(dict), _) => encode_names(&descrs[i], ids, b, dict),
                            (Values::I64(values), _, Some(unsigned)) => encode_delta(&descrs[i], values, b, unsigned),
                            _ => encode_column(&descrs[i], &props, b),
                        };
                        *chunks[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(chunk.map_err(|e| err(path, e)));
                    }
                });
            }
        });
        let mut row_group = writer.next_row_group().map_err(|e| err(path, e))?;
        for chunk in chunks {
            let (bytes, close) =
                chunk.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every column encoded")?;
            row_group.append_column(&bytes, close).map_err(|e| err(path, e))?;
        }
        row_group.close().map_err(|e| err(path, e))?;
        group.buffers.iter_mut().for_each(Buffer::clear);
        // The table may have finished and gone: then the buffers just drop.
        let _ = give_back.try_send(group.buffers);
    }
    writer.into_inner().map_err(|e| err(path, e))
}

/// A column through the parquet crate's writer, into memory.
fn encode_column(descr: &ColumnDescPtr, props: &WriterPropertiesPtr, b: &Buffer) -> Result<Chunk, String> {
    // Room for the chunk as most columns encode (a few bytes a value), so
    // the buffer is not copied as it grows.
    let values = b.defs.len().max(match &b.values {
        Values::I64(v) => v.len(),
        Values::F64(v) => v.len(),
        Values::Bool(v) => v.len(),
        Values::Text(v) => v.len(),
        Values::Ids(v) => v.len(),
    });
    let mut sink = TrackedWrite::new(Vec::with_capacity(values * 4 + 4096));
    let page_writer = SerializedPageWriter::new(&mut sink);
    let mut column = get_column_writer(descr.clone(), props.clone(), Box::new(page_writer));
    let defs = b.nullable.then_some(&b.defs[..]);
    let written = match &b.values {
        Values::I64(v) => get_typed_column_writer_mut::<Int64Type>(&mut column).write_batch(v, defs, None),
        Values::F64(v) => get_typed_column_writer_mut::<DoubleType>(&mut column).write_batch(v, defs, None),
        Values::Bool(v) => get_typed_column_writer_mut::<BoolType>(&mut column).write_batch(v, defs, None),
        Values::Text(v) => get_typed_column_writer_mut::<ByteArrayType>(&mut column).write_batch(v, defs, None),
        Values::Ids(_) => return Err("a names column without its dictionary".into()),
    };
    written.map_err(|e| e.to_string())?;
    let close = column.close().map_err(|e| e.to_string())?;
    let bytes = sink.into_inner().map_err(|e| e.to_string())?;
    Ok((Bytes::from(bytes), close))
}

/// A names column chunk: a PLAIN dictionary page of the names this row
/// group uses (in order of first use), then data pages of bit-packed
/// indices (RLE_DICTIONARY), uncompressed (random small indices do not
/// compress). Statistics are the min and max of the names used.
fn encode_names(descr: &ColumnDescPtr, ids: &[u32], b: &Buffer, dict: &[Option<ByteArray>]) -> Result<Chunk, String> {
    // Caller id -> index in this chunk's dictionary.
    let mut local = vec![u32::MAX; dict.len()];
    let mut used: Vec<u32> = Vec::new();
    let mut indices: Vec<u32> = Vec::with_capacity(ids.len());
    for &id in ids {
        let slot = local.get_mut(id as usize).ok_or("a name id without its text")?;
        if *slot == u32::MAX {
            *slot = used.len() as u32;
            used.push(id);
        }
        indices.push(*slot);
    }
    let text = |id: u32| dict[id as usize].as_ref().map(ByteArray::data).ok_or("a name id without its text");
    let mut page = Vec::new();
    let (mut min, mut max): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    for &id in &used {
        let t = text(id)?;
        page.extend_from_slice(&(t.len() as u32).to_le_bytes());
        page.extend_from_slice(t);
        min = Some(min.map_or(t, |m| m.min(t)));
        max = Some(max.map_or(t, |m| m.max(t)));
    }
    let levels = if b.nullable { b.defs.len() } else { ids.len() };
    let nulls = (levels - ids.len()) as u64;
    let bit_width = (32 - (used.len().max(2) as u32 - 1).leading_zeros()) as u8;

    let data_bytes = levels.div_ceil(8) * (bit_width as usize + b.nullable as usize);
    let mut sink = TrackedWrite::new(Vec::with_capacity(page.len() + data_bytes + 4096));
    let mut pages = SerializedPageWriter::new(&mut sink);
    let mut total = (0i64, 0i64);
    let mut add = |spec: parquet::column::page::PageWriteSpec| {
        total.0 += spec.compressed_size as i64;
        total.1 += spec.uncompressed_size as i64;
        spec.offset as i64
    };
    let size = page.len();
    let dict_page = Page::DictionaryPage {
        buf: Bytes::from(page),
        num_values: used.len() as u32,
        encoding: Encoding::PLAIN,
        is_sorted: false,
    };
    let dict_offset = add(pages.write_page(CompressedPage::new(dict_page, size)).map_err(|e| e.to_string())?);
    let mut data_offset = None;
    let (mut level, mut value) = (0usize, 0usize);
    let mut levels32 = Vec::with_capacity(DICT_PAGE_VALUES);
    while level < levels {
        let n = DICT_PAGE_VALUES.min(levels - level);
        let mut buf = Vec::with_capacity(n.div_ceil(8) * (bit_width as usize + 1) + 16);
        let present = page_def_levels(b, level, n, &mut levels32, &mut buf);
        buf.push(bit_width);
        hybrid(&indices[value..value + present], bit_width, &mut buf);
        let size = buf.len();
        let data = Page::DataPage {
            buf: Bytes::from(buf),
            num_values: n as u32,
            encoding: Encoding::RLE_DICTIONARY,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let offset = add(pages.write_page(CompressedPage::new(data, size)).map_err(|e| e.to_string())?);
        data_offset.get_or_insert(offset);
        level += n;
        value += present;
    }
    pages.close().map_err(|e| e.to_string())?;
    let statistics = Statistics::new(
        min.map(|m| ByteArray::from(m.to_vec())),
        max.map(|m| ByteArray::from(m.to_vec())),
        None,
        Some(nulls),
        false,
    );
    let metadata = ColumnChunkMetaData::builder(descr.clone())
        .set_compression(Compression::UNCOMPRESSED)
        .set_encodings(vec![Encoding::PLAIN, Encoding::RLE, Encoding::RLE_DICTIONARY])
        .set_page_encoding_stats(vec![
            PageEncodingStats { page_type: PageType::DICTIONARY_PAGE, encoding: Encoding::PLAIN, count: 1 },
            PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding: Encoding::RLE_DICTIONARY,
                count: levels.div_ceil(DICT_PAGE_VALUES) as i32,
            },
        ])
        .set_total_compressed_size(total.0)
        .set_total_uncompressed_size(total.1)
        .set_num_values(levels as i64)
        .set_data_page_offset(data_offset.unwrap_or(dict_offset))
        .set_dictionary_page_offset(Some(dict_offset))
        .set_statistics(statistics)
        .build()
        .map_err(|e| e.to_string())?;
    closed_chunk(sink, levels, metadata)
}

/// An integer column chunk written here, not by the parquet crate (whose
/// writer spent more on per-value bookkeeping than on encoding): pages of
/// `DICT_PAGE_VALUES` levels, each its definition levels (nullable
/// columns) then its values DELTA_BINARY_PACKED, uncompressed (bit-packed
/// deltas leave snappy little to find). Statistics are the min and max,
/// compared as the column's type does (unsigned for UINT_64).
fn encode_delta(descr: &ColumnDescPtr, values: &[i64], b: &Buffer, unsigned: bool) -> Result<Chunk, String> {
    let levels = if b.nullable { b.defs.len() } else { values.len() };
    let nulls = (levels - values.len()) as u64;
    let (mut min, mut max) = (None::<i64>, None::<i64>);
    if unsigned {
        if let (Some(lo), Some(hi)) = (values.iter().map(|&v| v as u64).min(), values.iter().map(|&v| v as u64).max()) {
            (min, max) = (Some(lo as i64), Some(hi as i64));
        }
    } else {
        (min, max) = (values.iter().copied().min(), values.iter().copied().max());
    }
    let mut sink = TrackedWrite::new(Vec::with_capacity(values.len() * 3 + 4096));
    let mut pages = SerializedPageWriter::new(&mut sink);
    let (mut total, mut data_offset, mut count) = ((0i64, 0i64), None, 0);
    let (mut level, mut value) = (0usize, 0usize);
    let mut levels32 = Vec::with_capacity(DICT_PAGE_VALUES);
    let mut buf = Vec::new();
    // An empty chunk still has one (empty) page.
    while level < levels || count == 0 {
        let n = DICT_PAGE_VALUES.min(levels - level);
        buf.clear();
        let present = page_def_levels(b, level, n, &mut levels32, &mut buf);
        delta_binary_packed(&values[value..value + present], &mut buf);
        let size = buf.len();
        let data = Page::DataPage {
            buf: Bytes::copy_from_slice(&buf),
            num_values: n as u32,
            encoding: Encoding::DELTA_BINARY_PACKED,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let spec = pages.write_page(CompressedPage::new(data, size)).map_err(|e| e.to_string())?;
        total.0 += spec.compressed_size as i64;
        total.1 += spec.uncompressed_size as i64;
        data_offset.get_or_insert(spec.offset as i64);
        level += n;
        value += present;
        count += 1;
    }
    pages.close().map_err(|e| e.to_string())?;
    let statistics = Statistics::Int64(
        parquet::file::statistics::ValueStatistics::new(min, max, None, Some(nulls), false)
            .with_backwards_compatible_min_max(!unsigned),
    );
    let metadata = ColumnChunkMetaData::builder(descr.clone())
        .set_compression(Compression::UNCOMPRESSED)
        .set_encodings(vec![Encoding::RLE, Encoding::DELTA_BINARY_PACKED])
        .set_page_encoding_stats(vec![PageEncodingStats {
            page_type: PageType::DATA_PAGE,
            encoding: Encoding::DELTA_BINARY_PACKED,
            count,
        }])
        .set_total_compressed_size(total.0)
        .set_total_uncompressed_size(total.1)
        .set_num_values(levels as i64)
        .set_data_page_offset(data_offset.unwrap_or(0))
        .set_statistics(statistics)
        .build()
        .map_err(|e| e.to_string())?;
    closed_chunk(sink, levels, metadata)
}

/// A data page's definition levels (`levels[level..level + n]` of a
/// nullable column), RLE/bit-packed behind their byte length, appended to
/// `buf`; returns how many of those levels hold a value (all `n` for a
/// required column, which has no levels).
fn page_def_levels(b: &Buffer, level: usize, n: usize, levels32: &mut Vec<u32>, buf: &mut Vec<u8>) -> usize {
    if !b.nullable {
        return n;
    }
    let defs = &b.defs[level..level + n];
    let mut packed = Vec::with_capacity(n.div_ceil(8) + 8);
    levels32.clear();
    levels32.extend(defs.iter().map(|&d| d as u32));
    hybrid(levels32, 1, &mut packed);
    buf.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    buf.extend_from_slice(&packed);
    defs.iter().filter(|&&d| d == 1).count()
}

/// A column chunk written here, as the row group writer takes it.
fn closed_chunk(sink: TrackedWrite<Vec<u8>>, levels: usize, metadata: ColumnChunkMetaData) -> Result<Chunk, String> {
    let bytes = sink.into_inner().map_err(|e| e.to_string())?;
    let close = ColumnCloseResult {
        bytes_written: bytes.len() as u64,
        rows_written: levels as u64,
        metadata,
        bloom_filter: None,
        column_index: None,
        offset_index: None,
    };
    Ok((Bytes::from(bytes), close))
}

/// Values per DELTA_BINARY_PACKED block, and miniblocks per block.
const DELTA_BLOCK: usize = 128;
const DELTA_MINIBLOCKS: usize = 4;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Values as DELTA_BINARY_PACKED: a header (block size, miniblocks per
/// block, value count, first value), then per block of 128 deltas its
/// least delta and each miniblock of 32 (delta - least) bit-packed at the
/// miniblock's width. The last miniblock is padded with zeros; the widths
/// of miniblocks past the values are 0 and their bodies absent.
fn delta_binary_packed(values: &[i64], out: &mut Vec<u8>) {
    const MINI: usize = DELTA_BLOCK / DELTA_MINIBLOCKS;
    uleb128(DELTA_BLOCK as u64, out);
    uleb128(DELTA_MINIBLOCKS as u64, out);
    uleb128(values.len() as u64, out);
    uleb128(zigzag(values.first().copied().unwrap_or(0)), out);
    let mut deltas = [0u64; DELTA_BLOCK];
    let mut i = 1;
    while i < values.len() {
        let n = DELTA_BLOCK.min(values.len() - i);
        let mut least = i64::MAX;
        for k in 0..n {
            let d = values[i + k].wrapping_sub(values[i + k - 1]);
            deltas[k] = d as u64;
            least = least.min(d);
        }
        uleb128(zigzag(least), out);
        // Each delta less the least fits in a u64 (the true difference of
        // two i64 is below 2^64).
        for d in &mut deltas[..n] {
            *d = d.wrapping_sub(least as u64);
        }
        deltas[n..].fill(0);
        let widths_at = out.len();
        out.extend_from_slice(&[0; DELTA_MINIBLOCKS]);
        for m in 0..n.div_ceil(MINI) {
            let mini = &deltas[m * MINI..(m + 1) * MINI];
            let width = 64 - mini.iter().fold(0, |a, &d| a | d).leading_zeros();
            out[widths_at + m] = width as u8;
            pack_u64(mini, width, out);
        }
        i += n;
    }
}

/// 32 values at `width` bits each, LSB first: exactly `4 * width` bytes.
fn pack_u64(values: &[u64], width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let (mut acc, mut bits) = (0u128, 0u32);
    for &v in values {
        acc |= (v as u128) << bits;
        bits += width;
        if bits >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            bits -= 64;
        }
    }
    out.extend_from_slice(&acc.to_le_bytes()[..(bits / 8) as usize]);
}

fn uleb128(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// Values in Parquet's RLE/bit-packing hybrid: a run of 8 or more equal
/// values (a day's fates, present fields' definition levels) as one RLE
/// run, the rest bit-packed. A bit-packed run holds whole groups of 8, so a
/// repeat run starts where the values before it fill their last group.
fn hybrid(values: &[u32], bit_width: u8, out: &mut Vec<u8>) {
    let (mut packed_from, mut i) = (0, 0);
    while i < values.len() {
        let v = values[i];
        let mut end = i + 1;
        while end < values.len() && values[end] == v {
            end += 1;
        }
        // The first index a repeat run may start at.
        let from = i + (8 - (i - packed_from) % 8) % 8;
        if end >= from + 8 {
            if from > packed_from {
                bit_pack(values[packed_from..from].iter().copied(), bit_width, out);
            }
            uleb128(((end - from) as u64) << 1, out);
            out.extend_from_slice(&v.to_le_bytes()[..(bit_width as usize).div_ceil(8)]);
            packed_from = end;
        }
        i = end;
    }
    if packed_from < values.len() {
        bit_pack(values[packed_from..].iter().copied(), bit_width, out);
    }
}

/// Values as one bit-packed run of the hybrid: a ULEB128 header (groups of
/// 8 << 1 | 1), then the values LSB first, the last group padded with zeros
/// (the page's value count says where they end; only the last run of a
/// page may be padded).
fn bit_pack(values: impl ExactSizeIterator<Item = u32>, bit_width: u8, out: &mut Vec<u8>) {
    let n = values.len();
    let groups = n.div_ceil(8);
    uleb128((groups as u64) << 1 | 1, out);
    out.reserve(groups * bit_width as usize);
    let (mut acc, mut bits) = (0u64, 0u32);
    for v in values.chain(std::iter::repeat_n(0, groups * 8 - n)) {
        debug_assert!(bit_width == 32 || v < 1 << bit_width);
        acc |= (v as u64) << bits;
        bits += bit_width as u32;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    debug_assert_eq!(bits, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    #[test]
    fn bit_packing_is_lsb_first_in_groups_of_eight() {
        let mut out = Vec::new();
        bit_pack([1u32, 0, 1, 1, 0, 0, 0, 1, 1].into_iter(), 1, &mut out);
        // Two groups: header (2 << 1 | 1), then 0b1000_1101, then 0b0000_0001.
        assert_eq!(out, [5, 0b1000_1101, 0b0000_0001]);
        let mut out = Vec::new();
        bit_pack([3u32, 1, 2].into_iter(), 2, &mut out);
        assert_eq!(out, [3, 0b10_01_11, 0]);
    }

    #[test]
    fn repeats_become_rle_runs_after_whole_groups() {
        // 3 distinct values, then 20 of one: the first 3 and 5 of the 20
        // fill a bit-packed group, the other 15 are one RLE run.
        let mut values = vec![0u32, 1, 2];
        values.extend([1; 20]);
        let mut out = Vec::new();
        hybrid(&values, 2, &mut out);
        let mut want = Vec::new();
        bit_pack([0u32, 1, 2, 1, 1, 1, 1, 1].into_iter(), 2, &mut want);
        want.extend([15 << 1, 1]);
        assert_eq!(out, want);
        // Too short a repeat stays bit-packed.
        let mut out = Vec::new();
        hybrid(&[1, 1, 1, 1, 1, 1, 1, 0, 1], 1, &mut out);
        assert_eq!(out, [5, 0b0111_1111, 0b0000_0001]);
    }

    /// Delta integer columns (written here) read back as written: nulls,
    /// the extremes of both types (deltas that wrap), runs, a partial last
    /// block and miniblock, more than a page and a row group; statistics
    /// compare unsigned for UINT_64.
    #[test]
    fn delta_columns_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let mut t = Table::create(
            &path,
            vec![
                col("u", Ty::U64, true).enc(Enc::Delta),
                col("i", Ty::I64, false).enc(Enc::Delta),
                col("seq", Ty::U64, false).enc(Enc::Delta),
            ],
        )
        .unwrap();
        let rows = ROW_GROUP_ROWS + DICT_PAGE_VALUES + 77;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut want = Vec::with_capacity(rows);
        for n in 0..rows {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = match n % 11 {
                0 => None,
                1 => Some(u64::MAX),
                2 => Some(0),
                3..=6 => Some(1_000_000 + n as u64),
                _ => Some(x >> (x % 64)),
            };
            let i = match n % 7 {
                0 => i64::MIN,
                1 => i64::MAX,
                2 => -(n as i64),
                _ => (x as i64) >> (x % 64),
            };
            t.opt_u64(u);
            t.i64(i);
            t.u64(n as u64 * 3);
            t.end_row().unwrap();
            want.push((u, i));
        }
        assert_eq!(t.finish().unwrap(), rows as u64);
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        for (n, row) in reader.get_row_iter(None).unwrap().enumerate() {
            let row = row.unwrap();
            let cells: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let (u, i) = want[n];
            assert_eq!(cells[0], &u.map_or(Field::Null, Field::ULong), "row {n}");
            assert_eq!(cells[1], &Field::Long(i), "row {n}");
            assert_eq!(cells[2], &Field::ULong(n as u64 * 3), "row {n}");
        }
        let group = reader.metadata().row_group(0);
        match group.column(0).statistics().unwrap() {
            Statistics::Int64(s) => {
                assert_eq!((s.min_opt(), s.max_opt()), (Some(&0), Some(&-1)), "0 and u64::MAX as INT64 bits");
                assert_eq!(s.null_count_opt(), Some(ROW_GROUP_ROWS.div_ceil(11) as u64));
            }
            other => panic!("{other:?}"),
        }
        match group.column(1).statistics().unwrap() {
            Statistics::Int64(s) => assert_eq!((s.min_opt(), s.max_opt()), (Some(&i64::MIN), Some(&i64::MAX))),
            other => panic!("{other:?}"),
        }
        assert!(group.column(2).encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        assert!(!group.column(2).encodings().any(|e| e == Encoding::PLAIN || e == Encoding::PLAIN_DICTIONARY));
    }

    /// Names columns (nullable or not, more than a page, a dictionary per
    /// row group) and the crate-written columns read back as written.
    #[test]
    fn names_columns_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut t = Table::create(
            &path,
            vec![
                col("n", Ty::U64, false).enc(Enc::Delta),
                col("name", Ty::Str, false),
                col("maybe", Ty::Str, true),
                col("small", Ty::Str, true),
                col("text", Ty::Str, true).enc(Enc::Plain),
                col("runs", Ty::Str, true),
            ],
        )
        .unwrap();
        let names: Vec<ByteArray> = (0..300).map(|i| ByteArray::from(format!("name{i}").as_str())).collect();
        let rows = ROW_GROUP_ROWS + 70_000;
        let name_of = |i: usize| (i * 7919 % 300) as u32;
        for i in 0..rows {
            t.u64(i as u64);
            let id = name_of(i);
            t.name(id, &names[id as usize]);
            if i % 3 == 0 {
                t.null()
            } else {
                t.name(id / 2, &names[id as usize / 2])
            }
            if i % 5 == 0 {
                t.str("five")
            } else {
                t.null()
            }
            if i % 100_000 == 1 {
                t.str(&format!("text {i}"))
            } else {
                t.null()
            }
            // Runs of names and of nulls, of every length around a group's 8.
            let run = (i / 13 + i / 1000) % 4;
            if run == 3 {
                t.null()
            } else {
                t.name(run as u32, &names[run])
            }
            t.end_row().unwrap();
        }
        assert_eq!(t.finish().unwrap(), rows as u64);
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let mut n = 0;
        for (i, row) in reader.get_row_iter(None).unwrap().enumerate() {
            let row = row.unwrap();
            let cells: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let id = name_of(i);
            assert_eq!(cells[0], &Field::ULong(i as u64));
            assert_eq!(cells[1], &Field::Str(format!("name{id}")), "row {i}");
            let maybe = if i % 3 == 0 { Field::Null } else { Field::Str(format!("name{}", id / 2)) };
            assert_eq!(cells[2], &maybe, "row {i}");
            assert_eq!(cells[3], &if i % 5 == 0 { Field::Str("five".into()) } else { Field::Null }, "row {i}");
            let text = if i % 100_000 == 1 { Field::Str(format!("text {i}")) } else { Field::Null };
            assert_eq!(cells[4], &text, "row {i}");
            let run = (i / 13 + i / 1000) % 4;
            let want = if run == 3 { Field::Null } else { Field::Str(format!("name{run}")) };
            assert_eq!(cells[5], &want, "row {i}");
            n += 1;
        }
        assert_eq!(n, rows);
        // The names columns carry their row group's min and max.
        let stats = reader.metadata().row_group(0).column(1).statistics().unwrap();
        assert_eq!(stats.min_bytes_opt(), Some(&b"name0"[..]));
        assert_eq!(stats.max_bytes_opt(), Some(&b"name99"[..]));
        assert_eq!(reader.metadata().row_group(0).column(2).statistics().unwrap().null_count_opt(), Some(349_526));
    }
}
