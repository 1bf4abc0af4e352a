//! A Parquet table written row by row: typed column buffers handed as a
//! row group every `ROW_GROUP_ROWS` rows to an encoder thread (so filling
//! and encoding overlap), snappy-compressed; names, kinds and fates are
//! dictionary encoded, nearly sorted integers delta encoded.

use parquet::basic::{Compression, DecimalType, Encoding, IntType, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Rows per row group: a million rows of a day's records is a few tens of
/// MB of buffers, and DuckDB reads row groups in parallel.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

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
    /// Dictionary (falling back to plain): repeated values (names, kinds,
    /// sides, prices, quantities).
    Dict,
    /// DELTA_BINARY_PACKED, no dictionary: nearly sorted integers (lines,
    /// seqs, event times, order ids). A dictionary would hash every one of
    /// them only to be abandoned.
    Delta,
    /// Plain, no dictionary: unique values in no order (lifetimes, notionals).
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
}

enum Values {
    I64(Vec<i64>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Bytes(Vec<ByteArray>),
}

struct Buffer {
    values: Values,
    /// Definition levels (1 present, 0 null); kept for nullable columns only.
    defs: Vec<i16>,
    nullable: bool,
}

/// One Parquet file being written.
pub struct Table {
    path: PathBuf,
    columns: Vec<Column>,
    buffers: Vec<Buffer>,
    /// The encoder thread: row groups are encoded, compressed and written
    /// there while the caller fills the next one (two cores, two stages).
    to_writer: Option<SyncSender<Vec<Buffer>>>,
    writer: Option<JoinHandle<Result<File, String>>>,
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
        let props = props.build();
        let file = crate::outputs::create(path).map_err(|e| err(path, e))?;
        let writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).map_err(|e| err(path, e))?;
        let buffers = empty_buffers(&columns);
        // One row group queued while one is encoded and one filled.
        let (to_writer, groups) = sync_channel::<Vec<Buffer>>(1);
        let at = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("export-writer".into())
            .spawn(move || write_groups(writer, groups, &at))
            .map_err(|e| err(path, e))?;
        Ok(Table {
            path: path.to_path_buf(),
            columns,
            buffers,
            to_writer: Some(to_writer),
            writer: Some(writer),
            pending: 0,
            rows: 0,
            next: 0,
        })
    }

    fn slot(&mut self, ty: &[Ty]) -> &mut Buffer {
        let i = self.next;
        assert!(i < self.columns.len(), "{}: more values than columns in a row", self.path.display());
        assert!(
            ty.contains(&self.columns[i].ty),
            "column {} is {:?}, not {ty:?}",
            self.columns[i].name,
            self.columns[i].ty
        );
        self.next += 1;
        let b = &mut self.buffers[i];
        if b.nullable {
            b.defs.push(1);
        }
        b
    }

    pub fn u64(&mut self, v: u64) {
        // UINT_64 is stored as the same 64 bits in an INT64.
        if let Values::I64(values) = &mut self.slot(&[Ty::U64]).values {
            values.push(v as i64);
        }
    }

    pub fn i64(&mut self, v: i64) {
        if let Values::I64(values) = &mut self.slot(&[Ty::I64, Ty::Price]).values {
            values.push(v);
        }
    }

    pub fn f64(&mut self, v: f64) {
        if let Values::F64(values) = &mut self.slot(&[Ty::F64]).values {
            values.push(v);
        }
    }

    pub fn bool(&mut self, v: bool) {
        if let Values::Bool(values) = &mut self.slot(&[Ty::Bool]).values {
            values.push(v);
        }
    }

    /// A text value; `ByteArray` clones share their bytes, so a caller may
    /// keep one per distinct name and hand out clones.
    pub fn bytes(&mut self, v: ByteArray) {
        if let Values::Bytes(values) = &mut self.slot(&[Ty::Str]).values {
            values.push(v);
        }
    }

    pub fn str(&mut self, v: &str) {
        self.bytes(ByteArray::from(v));
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

    pub fn opt_bytes(&mut self, v: Option<ByteArray>) {
        match v {
            Some(v) => self.bytes(v),
            None => self.null(),
        }
    }

    pub fn null(&mut self) {
        let i = self.next;
        assert!(self.columns[i].nullable, "column {} is not nullable", self.columns[i].name);
        self.next += 1;
        self.buffers[i].defs.push(0);
    }

    /// Ends a row; every column must have had a value.
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
        let full = std::mem::replace(&mut self.buffers, empty_buffers(&self.columns));
        let sent = self.to_writer.as_ref().expect("a table is written until finished").send(full);
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

    pub fn finish(mut self) -> Result<u64, String> {
        self.flush()?;
        let file = self.join()?;
        file.sync_all().map_err(|e| err(&self.path, e))?;
        Ok(self.rows)
    }
}

fn empty_buffers(columns: &[Column]) -> Vec<Buffer> {
    columns
        .iter()
        .map(|c| Buffer {
            values: match c.ty {
                Ty::U64 | Ty::I64 | Ty::Price => Values::I64(Vec::new()),
                Ty::F64 => Values::F64(Vec::new()),
                Ty::Bool => Values::Bool(Vec::new()),
                Ty::Str => Values::Bytes(Vec::new()),
            },
            defs: Vec::new(),
            nullable: c.nullable,
        })
        .collect()
}

/// The encoder thread: each row group as it comes, then the footer.
fn write_groups(
    mut writer: SerializedFileWriter<File>,
    groups: Receiver<Vec<Buffer>>,
    path: &Path,
) -> Result<File, String> {
    for buffers in groups {
        let mut group = writer.next_row_group().map_err(|e| err(path, e))?;
        for b in &buffers {
            let mut column = group.next_column().map_err(|e| err(path, e))?.expect("a writer per schema column");
            let defs = b.nullable.then_some(&b.defs[..]);
            match &b.values {
                Values::I64(v) => column.typed::<Int64Type>().write_batch(v, defs, None),
                Values::F64(v) => column.typed::<DoubleType>().write_batch(v, defs, None),
                Values::Bool(v) => column.typed::<BoolType>().write_batch(v, defs, None),
                Values::Bytes(v) => column.typed::<ByteArrayType>().write_batch(v, defs, None),
            }
            .map_err(|e| err(path, e))?;
            column.close().map_err(|e| err(path, e))?;
        }
        group.close().map_err(|e| err(path, e))?;
    }
    writer.into_inner().map_err(|e| err(path, e))
}
