//! A tamper-evident audit log: security events as JSON lines, each bound to the
//! one before it by a hash chain, so that [`verify_audit_log`] finds a record
//! that was edited, inserted, moved, cut short or deleted from the middle; and,
//! given a head kept elsewhere ([`verify_audit_log_with_head`]), records
//! removed from the end.
//!
//! # Record format
//!
//! One record a line:
//!
//! ```text
//! {"seq":41,"prev":"<64 hex>","event":"authn_login_fail:alice","level":"WARN","mac":"<64 hex>"}
//! ```
//!
//! - `seq` counts the records of the chain from 0, across rotations.
//! - `prev` is the `mac` of the record before; 64 zeros for the chain's first.
//! - then the record's own fields, as the caller wrote them.
//! - `mac` is the lowercase hex HMAC-SHA256, with the [key](AuditLog::key), of
//!   the line's bytes from `{` up to `,"mac":`; without a key, their SHA-256.
//!   As `prev` is among those bytes, each mac covers the whole chain before it.
//!
//! # Durability
//!
//! Each record is handed to the operating system when it is appended, so a
//! crash of the process loses none. [`Durability`] says when records are forced
//! to disk: after each one, or once per batch the writer takes from its queue
//! (the default). Files rotate as log files do ([`Rotation`]), and are synced
//! before they are rotated; `seq` goes on in the new file. A record cut short by
//! a crash of the machine stays as it is, for the verifier to report, and the
//! chain goes on from the last whole record on the next line.
//!
//! # What it detects, and what it does not
//!
//! Within the files it is given, the verifier reports the first record that
//! was edited, inserted, moved (reordered), cut short, or deleted before the
//! last record (a gap in `seq`, or a `prev` that is not the mac before it).
//! Without a key, whoever can write the files can also recompute every hash
//! after a change, so only changes by someone who does not are caught; with a
//! key, nobody without it can forge a record. The log is not encrypted.
//!
//! The chain alone cannot show what is missing at its ends:
//!
//! - **The newest records, or the newest files, removed** at a line boundary
//!   (the tail cut), or **the whole log deleted**: the records that remain
//!   still form a valid chain. Only a head kept elsewhere shows it: keep
//!   [`Verified::to_head`] (`SEQ:MAC`, printed by `audit-verify`) where the
//!   log's writers cannot change it (another host, a ticket, a log service)
//!   and check it the next time with [`verify_audit_log_with_head`]
//!   (`audit-verify --head SEQ:MAC`): a chain that no longer reaches it, or
//!   that has another record at its `seq`, is reported.
//! - **The oldest files deleted**: the first record read is trusted as the
//!   start. A kept head older than every record given is reported as such
//!   ([`BreakKind::HeadBeforeFiles`]).
//!
//! # After a restart
//!
//! The writer keeps its head (`SEQ:MAC` of the last record synced) in a small
//! file next to the log, `.NAME.head` (hidden, so that `NAME*` does not match
//! it; [`AuditLog::head_file`] moves it), rewritten after each batch. When it
//! starts, it continues the chain only if the log still holds that record
//! (and the one [`AuditLog::expect_head`] names, when one is given): when the
//! log ends before it, holds another record at its `seq`, or is gone, the
//! writer refuses to start ([`ConfigError::AuditChain`](crate::ConfigError::AuditChain),
//! so [`ApmBuilder::build`](crate::ApmBuilder::build) fails) rather than go on
//! over a cut chain or start a new one over the evidence. To start a new chain
//! after checking the files, move the log, its rotated files and its head file
//! aside. The head file is written by the same process as the log: it catches
//! a tail cut by someone (or something: a restored backup, a wrong rotation
//! tool) that did not also rewrite it, and no more; a head kept elsewhere
//! catches the rest.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::Rotation;
use crate::logs::json::push_u64;
use crate::logs::rotate::{self, RotatingFile};

/// When audit records are forced to disk (`fsync`). Either way each record is
/// handed to the operating system as soon as it is appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// After each record: it is on disk when its write returns (one `fsync`
    /// per record).
    EveryRecord,
    /// Once at the end of each batch of records the writer takes from its
    /// queue (the default).
    #[default]
    Batch,
}

/// Where and how the audit log is written.
///
/// ```
/// use tower_apm::Rotation;
/// use tower_apm::security::{AuditLog, Durability};
///
/// let audit = AuditLog::new("/var/log/checkout/app.audit")
///     .key("a secret from the secret store")
///     .rotation(Rotation::Daily)
///     .backups(90)
///     .durability(Durability::EveryRecord);
/// // Debug output never shows the key.
/// assert!(!format!("{audit:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    key: Option<Vec<u8>>,
    rotation: Rotation,
    backups: usize,
    durability: Durability,
    head_file: Option<PathBuf>,
    expect_head: Option<AuditHead>,
}

impl AuditLog {
    /// The log at `path`, with no key, no rotation, 5 backups (once rotation is
    /// set) and [`Durability::Batch`].
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog {
            path: path.into(),
            key: None,
            rotation: Rotation::Never,
            backups: 5,
            durability: Durability::Batch,
            head_file: None,
            expect_head: None,
        }
    }

    /// The HMAC key of the records' macs. Without a key the chain detects
    /// edits, insertions, reordering and deletions before the last record by
    /// anyone who does not recompute the hashes; with a key, nobody without it
    /// can forge a record. Records removed from the end are only seen against
    /// a head kept elsewhere (see the [module](self)).
    /// The verifier needs the same key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> AuditLog {
        self.key = Some(key.into());
        self
    }

    /// When the file rotates (default: never). The chain goes on across files.
    pub fn rotation(mut self, rotation: Rotation) -> AuditLog {
        self.rotation = rotation;
        self
    }

    /// How many rotated files are kept (default 5).
    pub fn backups(mut self, n: usize) -> AuditLog {
        self.backups = n;
        self
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the writer keeps its head, `SEQ:MAC` of the last record synced
    /// (default: `.NAME.head` next to the log, for a log named `NAME`). At
    /// start, the log must still reach it: see the [module](self)'s "After a
    /// restart".
    pub fn head_file(mut self, path: impl Into<PathBuf>) -> AuditLog {
        self.head_file = Some(path.into());
        self
    }

    /// A head kept elsewhere (from `audit-verify`, or [`Verified::to_head`]):
    /// the writer refuses to start unless the log holds that record, so a log
    /// whose tail was cut, or that was replaced, is not silently continued.
    pub fn expect_head(mut self, head: AuditHead) -> AuditLog {
        self.expect_head = Some(head);
        self
    }

    /// The head file's path.
    pub(crate) fn head_path(&self) -> PathBuf {
        if let Some(p) = &self.head_file {
            return p.clone();
        }
        let name = self
            .path
            .file_name()
            .map_or_else(|| "audit".into(), |n| n.to_string_lossy().into_owned());
        self.path.with_file_name(format!(".{name}.head"))
    }

    /// When records are forced to disk (default: once per batch).
    pub fn durability(mut self, d: Durability) -> AuditLog {
        self.durability = d;
        self
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("rotation", &self.rotation)
            .field("backups", &self.backups)
            .field("durability", &self.durability)
            .field("head_file", &self.head_path())
            .field("expect_head", &self.expect_head)
            .finish()
    }
}

/// A chain that verified: what it holds, and its head to keep elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// How many records were checked (0 when no file holds one; `first_seq`
    /// and `last_seq` are then 0 and `head` is 64 zeros).
    pub records: u64,
    /// The `seq` of the first record, trusted as the chain's start.
    pub first_seq: u64,
    /// The `seq` of the last record.
    pub last_seq: u64,
    /// The `mac` of the last record. Keep it (with `last_seq`: [`Verified::to_head`])
    /// where the log's writers cannot change it, and check it the next time
    /// with [`verify_audit_log_with_head`]: the chain alone cannot show records
    /// removed from its end.
    pub head: String,
}

impl Verified {
    /// The head to keep elsewhere: `last_seq` and `head`.
    pub fn to_head(&self) -> AuditHead {
        AuditHead {
            seq: self.last_seq,
            mac: self.head.clone(),
        }
    }
}

/// A record's place in the chain, kept to check the log against later: its
/// `seq` and `mac`. Written and parsed as `SEQ:MAC` (`41:3f9a...`, the mac in
/// 64 hex digits), as `audit-verify` prints it and reads it (`--head`).
///
/// ```
/// use tower_apm::security::AuditHead;
///
/// let head: AuditHead = format!("41:{}", "ab".repeat(32)).parse().unwrap();
/// assert_eq!(head.seq, 41);
/// assert_eq!(head.to_string(), format!("41:{}", "ab".repeat(32)));
/// assert!("41".parse::<AuditHead>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditHead {
    /// The record's `seq`.
    pub seq: u64,
    /// The record's `mac`: 64 lowercase hex digits.
    pub mac: String,
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.mac)
    }
}

/// Why a text is not an [`AuditHead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHead(String);

impl fmt::Display for InvalidHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected SEQ:MAC, a record's seq and its mac in 64 hex digits, as audit-verify prints them",
            self.0
        )
    }
}

impl std::error::Error for InvalidHead {}

impl FromStr for AuditHead {
    type Err = InvalidHead;

    fn from_str(s: &str) -> Result<AuditHead, InvalidHead> {
        let s = s.trim();
        let (seq, mac) = s
            .split_once(':')
            .ok_or_else(|| InvalidHead("no ':' between the seq and the mac".into()))?;
        let seq = seq
            .parse()
            .map_err(|_| InvalidHead(format!("the seq {seq:?} is not a whole number")))?;
        let mac = mac.to_ascii_lowercase();
        if hex64(mac.as_bytes()).is_none() {
            return Err(InvalidHead("the mac is not 64 hex digits".into()));
        }
        Ok(AuditHead { seq, mac })
    }
}

impl AuditHead {
    /// `None` when the mac is not 64 lowercase hex digits (a head built by
    /// hand): no record can match it.
    fn link(&self) -> Option<Link> {
        hex64(self.mac.as_bytes()).map(|mac| Link {
            seq: self.seq,
            mac: *mac,
        })
    }
}

/// The first record that breaks the chain, found by [`verify_audit_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The file it is in.
    pub file: PathBuf,
    /// Its line in the file, from 1 (0 when the file could not be read, or
    /// when what is wrong is where the chain ends: [`BreakKind::HeadNotReached`],
    /// [`BreakKind::HeadBeforeFiles`]).
    pub line: u64,
    /// Its `seq`, when the line has one.
    pub seq: Option<u64>,
    /// What is wrong with it.
    pub kind: BreakKind,
}

/// What breaks the chain at a record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The line is not a record: edited, or not written by the audit log.
    Malformed,
    /// The record is cut short: the last line of a file without its newline,
    /// or a line that stops before the record's end (a crash while writing).
    Truncated,
    /// The mac does not match the record: it was edited, or the key is wrong.
    MacMismatch,
    /// The `seq` is not the one after the previous record's: a record was
    /// deleted before this one, or this one was inserted or moved.
    SeqGap {
        /// The `seq` the record should have.
        expected: u64,
        /// The `seq` it has.
        found: u64,
    },
    /// `prev` is not the previous record's mac (or, at seq 0, not zeros): a
    /// record was replaced, deleted, inserted or moved.
    PrevMismatch,
    /// The file could not be read.
    Unreadable {
        /// The operating system's error.
        error: String,
    },
    /// The chain ends before the kept head: records (or the newest files)
    /// were removed from its end, or the whole log was deleted.
    HeadNotReached {
        /// The kept head's `seq`.
        head_seq: u64,
        /// The `seq` of the last record found; `None` when there is none.
        last_seq: Option<u64>,
    },
    /// The record at the kept head's `seq` has another mac: the chain was
    /// rewritten from there, or the head is another log's (or another key's).
    HeadMismatch {
        /// The kept head's `seq`.
        head_seq: u64,
    },
    /// The kept head is older than the first record given: it cannot be
    /// checked without the older files.
    HeadBeforeFiles {
        /// The kept head's `seq`.
        head_seq: u64,
        /// The `seq` of the first record given.
        first_seq: u64,
    },
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakKind::Malformed => f.write_str("not an audit record: edited, or not written by the audit log"),
            BreakKind::Truncated => f.write_str("record cut short: a crash while writing, or the file was cut"),
            BreakKind::MacMismatch => f.write_str("record edited or wrong key: its mac does not match"),
            BreakKind::SeqGap { expected, found } => write!(
                f,
                "expected seq {expected}, found {found}: a record before it was deleted, or it was inserted or moved"
            ),
            BreakKind::PrevMismatch => {
                f.write_str("its prev is not the mac of the record before it: a record was replaced, deleted or moved")
            }
            BreakKind::Unreadable { error } => write!(f, "cannot read: {error}"),
            BreakKind::HeadNotReached {
                head_seq,
                last_seq: Some(last),
            } => write!(
                f,
                "the chain ends at seq {last}, before the kept head at seq {head_seq}: records were removed \
                 from its end (or the newest files are missing)"
            ),
            BreakKind::HeadNotReached {
                head_seq,
                last_seq: None,
            } => write!(
                f,
                "no record, but the kept head is at seq {head_seq}: the log was emptied or deleted"
            ),
            BreakKind::HeadMismatch { head_seq } => write!(
                f,
                "the record at the kept head's seq {head_seq} has another mac: the chain was rewritten from \
                 there, or the head belongs to another log or key"
            ),
            BreakKind::HeadBeforeFiles { head_seq, first_seq } => write!(
                f,
                "the kept head (seq {head_seq}) is older than the first record given (seq {first_seq}): \
                 give the older files too"
            ),
        }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for ChainBreak {}

/// Checks one chain spread over `files`, given in any order (they are read in
/// the order of their first record's `seq`; empty files are skipped), with the
/// key the log was written with. Returns the first record that breaks it.
///
/// The first record read is trusted as the chain's start: its `prev` is only
/// checked at seq 0 (it must be zeros). So deleting the oldest files, or
/// records at the end, cannot be seen from the files alone: keep
/// [`Verified::to_head`] elsewhere and check it the next time with
/// [`verify_audit_log_with_head`].
///
/// ```no_run
/// use tower_apm::security::verify_audit_log;
///
/// let files = ["/var/log/checkout/app.audit", "/var/log/checkout/app.audit.1"];
/// match verify_audit_log(&files, Some(b"a secret from the secret store".as_slice())) {
///     Ok(v) => println!("ok: {} records, seq {}..{}, head {}", v.records, v.first_seq, v.last_seq, v.head),
///     Err(broken) => eprintln!("{broken}"),
/// }
/// ```
pub fn verify_audit_log<P: AsRef<Path>>(files: &[P], key: Option<&[u8]>) -> Result<Verified, ChainBreak> {
    verify(files, key, None)
}

/// [`verify_audit_log`], and the chain must reach `head`, kept elsewhere since
/// an earlier check (`audit-verify` prints it; [`Verified::to_head`]): the
/// record at `head.seq` must be in the files, with `head.mac`. This catches
/// what the chain alone cannot: records removed from its end, the newest
/// files or the whole log deleted ([`BreakKind::HeadNotReached`]), and a chain
/// rewritten from the head on ([`BreakKind::HeadMismatch`]). Records written
/// after the head are checked as usual.
///
/// ```no_run
/// use tower_apm::security::{AuditHead, verify_audit_log_with_head};
///
/// let kept: AuditHead = std::fs::read_to_string("/mnt/elsewhere/app.audit.head")?.parse()?;
/// let v = verify_audit_log_with_head(&["/var/log/checkout/app.audit"], Some(b"key".as_slice()), &kept)?;
/// std::fs::write("/mnt/elsewhere/app.audit.head", v.to_head().to_string())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify_audit_log_with_head<P: AsRef<Path>>(
    files: &[P],
    key: Option<&[u8]>,
    head: &AuditHead,
) -> Result<Verified, ChainBreak> {
    verify(files, key, Some(head))
}

fn verify<P: AsRef<Path>>(files: &[P], key: Option<&[u8]>, head: Option<&AuditHead>) -> Result<Verified, ChainBreak> {
    let hasher = Hasher::new(key);
    let mut ordered = Vec::with_capacity(files.len());
    for file in files {
        let file = file.as_ref();
        if let Some(first) = first_line(file).map_err(|e| unreadable(file, &e))? {
            ordered.push((leading_seq(&first), file));
        }
    }
    // A file that does not start with a record comes first, to be reported.
    ordered.sort_by_key(|&(seq, _)| seq);
    let mut chain = Chain {
        head: head.map(|h| (h.seq, h.link())),
        ..Chain::default()
    };
    for &(_, file) in &ordered {
        chain.verify_file(file, &hasher)?;
    }
    if let Some(head) = head {
        if !chain.head_seen {
            let file = ordered
                .last()
                .map(|(_, f)| f.to_path_buf())
                .or_else(|| files.last().map(|f| f.as_ref().to_owned()))
                .unwrap_or_default();
            let kind = match chain.first_seq {
                Some(first_seq) if head.seq < first_seq => BreakKind::HeadBeforeFiles {
                    head_seq: head.seq,
                    first_seq,
                },
                _ => BreakKind::HeadNotReached {
                    head_seq: head.seq,
                    last_seq: chain.last.map(|l| l.seq),
                },
            };
            return Err(ChainBreak {
                file,
                line: 0,
                seq: None,
                kind,
            });
        }
    }
    Ok(Verified {
        records: chain.records,
        first_seq: chain.first_seq.unwrap_or(0),
        last_seq: chain.last.as_ref().map_or(0, |l| l.seq),
        head: String::from_utf8_lossy(chain.last.as_ref().map_or(&ZEROS, |l| &l.mac)).into_owned(),
    })
}

fn unreadable(file: &Path, e: &io::Error) -> ChainBreak {
    ChainBreak {
        file: file.to_owned(),
        line: 0,
        seq: None,
        kind: BreakKind::Unreadable { error: e.to_string() },
    }
}

/// The first line of `path`, `None` when it is empty.
fn first_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    BufReader::new(File::open(path)?).read_until(b'\n', &mut line)?;
    Ok((!line.is_empty()).then_some(line))
}

/// The records verified so far.
#[derive(Default)]
struct Chain {
    records: u64,
    first_seq: Option<u64>,
    last: Option<Link>,
    /// The kept head to find, and its link (`None`: a mac no record can have).
    head: Option<(u64, Option<Link>)>,
    head_seen: bool,
}

impl Chain {
    fn verify_file(&mut self, path: &Path, hasher: &Hasher) -> Result<(), ChainBreak> {
        let mut reader = BufReader::new(File::open(path).map_err(|e| unreadable(path, &e))?);
        let mut buf = Vec::new();
        let mut line_no = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(|e| unreadable(path, &e))? == 0 {
                return Ok(());
            }
            line_no += 1;
            let broken = |seq, kind| ChainBreak {
                file: path.to_owned(),
                line: line_no,
                seq,
                kind,
            };
            let Some(line) = buf.strip_suffix(b"\n") else {
                return Err(broken(leading_seq(&buf), BreakKind::Truncated));
            };
            let record = parse(line).map_err(|kind| broken(leading_seq(line), kind))?;
            let seq = Some(record.seq);
            // The mac first: an edited byte is reported at its own record.
            if hasher.mac(record.body) != *record.mac {
                return Err(broken(seq, BreakKind::MacMismatch));
            }
            match &self.last {
                Some(last) => {
                    let expected = last.seq.wrapping_add(1);
                    if record.seq != expected {
                        return Err(broken(
                            seq,
                            BreakKind::SeqGap {
                                expected,
                                found: record.seq,
                            },
                        ));
                    }
                    if *record.prev != last.mac {
                        return Err(broken(seq, BreakKind::PrevMismatch));
                    }
                }
                None if record.seq == 0 && *record.prev != ZEROS => {
                    return Err(broken(seq, BreakKind::PrevMismatch));
                }
                None => {}
            }
            if let Some((head_seq, link)) = self.head {
                if record.seq == head_seq {
                    if link.is_none_or(|l| l.mac != *record.mac) {
                        return Err(broken(seq, BreakKind::HeadMismatch { head_seq }));
                    }
                    self.head_seen = true;
                }
            }
            self.records += 1;
            self.first_seq.get_or_insert(record.seq);
            self.last = Some(Link {
                seq: record.seq,
                mac: *record.mac,
            });
        }
    }
}

const SEQ: &[u8] = b"{\"seq\":";
const PREV: &[u8] = b",\"prev\":\"";
const MAC: &[u8] = b",\"mac\":\"";
const END: &[u8] = b"\"}";
/// The `prev` of a chain's first record.
const ZEROS: [u8; 64] = [b'0'; 64];

/// A record's place in the chain: its seq and mac (hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    seq: u64,
    mac: [u8; 64],
}

/// A record line (without its newline), split into its parts.
struct Record<'a> {
    seq: u64,
    prev: &'a [u8; 64],
    /// The bytes the mac covers: from `{` up to `,"mac":`.
    body: &'a [u8],
    mac: &'a [u8; 64],
}

fn parse(line: &[u8]) -> Result<Record<'_>, BreakKind> {
    if !line.ends_with(END) {
        // A line that starts as a record but does not end as one was cut short.
        return Err(if line.starts_with(b"{") {
            BreakKind::Truncated
        } else {
            BreakKind::Malformed
        });
    }
    let parts = || {
        let (body, tail) = line.split_at_checked(line.len().checked_sub(MAC.len() + 64 + END.len())?)?;
        let mac = hex64(tail.strip_prefix(MAC)?.strip_suffix(END)?)?;
        let (seq, rest) = split_seq(body)?;
        let (prev, rest) = rest.strip_prefix(PREV)?.split_at_checked(64)?;
        // The fields, when there are any, follow a comma.
        let fields = rest.strip_prefix(b"\"")?;
        (fields.is_empty() || fields.starts_with(b",")).then_some(())?;
        Some(Record {
            seq,
            prev: hex64(prev)?,
            body,
            mac,
        })
    };
    parts().ok_or(BreakKind::Malformed)
}

/// `bytes` as 64 lowercase hex digits.
fn hex64(bytes: &[u8]) -> Option<&[u8; 64]> {
    let hex: &[u8; 64] = bytes.try_into().ok()?;
    hex.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(hex)
}

/// The `seq` a record line starts with, and the bytes after it.
fn split_seq(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(SEQ)?;
    let (digits, rest) = rest.split_at(rest.iter().take_while(|b| b.is_ascii_digit()).count());
    let seq = std::str::from_utf8(digits).ok()?.parse().ok()?;
    rest.starts_with(b",").then_some((seq, rest))
}

fn leading_seq(line: &[u8]) -> Option<u64> {
    split_seq(line).map(|(seq, _)| seq)
}

/// The mac of the records: HMAC-SHA256 with the key, SHA-256 without one.
#[derive(Clone)]
struct Hasher(Option<Hmac<Sha256>>);

impl Hasher {
    fn new(key: Option<&[u8]>) -> Hasher {
        Hasher(key.map(|key| Hmac::new_from_slice(key).expect("HMAC takes keys of any length")))
    }

    /// The mac of `bytes`, in lowercase hex.
    fn mac(&self, bytes: &[u8]) -> [u8; 64] {
        match &self.0 {
            Some(keyed) => {
                let mut mac = keyed.clone();
                mac.update(bytes);
                hex(&mac.finalize().into_bytes())
            }
            None => hex(&Sha256::digest(bytes)),
        }
    }
}

/// 32 bytes in lowercase hex.
fn hex(bytes: &[u8]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

/// Why the audit writer did not start.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The log (or its head file) cannot be read or written.
    Io(io::Error),
    /// The log does not reach its kept head: what was expected and found.
    Cut(String),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> OpenError {
        OpenError::Io(e)
    }
}

/// Appends records to the audit log, continuing its chain.
pub(crate) struct AuditWriter {
    file: RotatingFile,
    hasher: Hasher,
    durability: Durability,
    /// The next record's seq and `prev` (the mac of the last one written).
    next_seq: u64,
    prev: [u8; 64],
    /// Whether records were written since the last sync.
    unsynced: bool,
    /// Where the head is kept, and whether records were written since it was.
    head_path: PathBuf,
    head_stale: bool,
    line: Vec<u8>,
}

impl AuditWriter {
    /// Opens or creates the file and resumes the chain: seq and prev come from
    /// the last complete record of the current file, or, when it has none, of
    /// the newest backup. A partial last line (a crash mid-write) is left as it
    /// is (the verifier will report it), a newline is written after it, and the
    /// chain continues from the last complete record.
    ///
    /// The log must reach the head in its head file and the one the config
    /// expects: the record at the head's seq must be in it, with the head's
    /// mac. Otherwise [`OpenError::Cut`], and nothing is written.
    pub(crate) fn open(config: &AuditLog, now: SystemTime) -> Result<AuditWriter, OpenError> {
        let path = &config.path;
        let (mut last, partial) = last_record(path)?;
        if last.is_none() {
            // The newest backup is the one whose chain goes furthest.
            for backup in rotate::backups(path)? {
                let (link, _) = last_record(&backup)?;
                if link.is_some_and(|l| last.is_none_or(|last| l.seq > last.seq)) {
                    last = link;
                }
            }
        }
        let head_path = config.head_path();
        let kept = read_head(&head_path)?;
        if let Some(head) = &kept {
            reaches(path, last, head, &format!("its head file {}", head_path.display()))?;
        }
        if let Some(head) = &config.expect_head {
            reaches(path, last, head, "the head given to AuditLog::expect_head")?;
        }
        if partial {
            let mut file = OpenOptions::new().append(true).open(path)?;
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        if let Some(l) = last {
            if kept.is_none_or(|k| k.link() != Some(l)) {
                write_head(&head_path, l)?;
            }
        }
        let (next_seq, prev) = last.map_or((0, ZEROS), |l| (l.seq.wrapping_add(1), l.mac));
        Ok(AuditWriter {
            file: RotatingFile::open(path, config.rotation, config.backups, now)?.sync_on_rotate(),
            hasher: Hasher::new(config.key.as_deref()),
            durability: config.durability,
            next_seq,
            prev,
            unsynced: false,
            head_path,
            head_stale: false,
            line: Vec::with_capacity(256),
        })
    }

    /// Appends one record with `fields`, the inside of a JSON object (valid
    /// JSON, on one line). Under [`Durability::EveryRecord`], writes and syncs
    /// before returning. A record that could not be written leaves the chain
    /// as it was; one written whose sync failed stays in it (the error is
    /// returned all the same).
    pub(crate) fn append(&mut self, fields: &str, now: SystemTime) -> io::Result<()> {
        if fields.contains(['\n', '\r']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "audit record fields must be on one line",
            ));
        }
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(SEQ);
        push_u64(line, self.next_seq);
        line.extend_from_slice(PREV);
        line.extend_from_slice(&self.prev);
        line.push(b'"');
        if !fields.is_empty() {
            line.push(b',');
            line.extend_from_slice(fields.as_bytes());
        }
        let mac = self.hasher.mac(line);
        line.extend_from_slice(MAC);
        line.extend_from_slice(&mac);
        line.extend_from_slice(END);
        line.push(b'\n');
        self.file.write_line_through(line, now)?;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.prev = mac;
        self.unsynced = true;
        self.head_stale = true;
        match self.durability {
            Durability::EveryRecord => {
                self.file.sync()?;
                self.unsynced = false;
                Ok(())
            }
            Durability::Batch => Ok(()),
        }
    }

    /// The end of a batch: syncs the records written since the last sync
    /// (under [`Durability::Batch`], or after a failed sync), then keeps the
    /// new head in the head file: never a head whose record is not on disk.
    pub(crate) fn end_batch(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync()?;
            self.unsynced = false;
        }
        if self.head_stale {
            let head = Link {
                seq: self.next_seq.wrapping_sub(1),
                mac: self.prev,
            };
            write_head(&self.head_path, head)?;
            self.head_stale = false;
        }
        Ok(())
    }
}

/// The head kept in `path`; `None` when there is no such file.
fn read_head(path: &Path) -> Result<Option<AuditHead>, OpenError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.parse().map(Some).map_err(|e: InvalidHead| {
            OpenError::Cut(format!(
                "its head file {} holds no head ({e}); it was edited, or is not an audit head",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OpenError::Io(e)),
    }
}

/// Replaces the head file with `head` (a new file synced, then renamed over
/// the old one: a crash leaves the old head or the new one, never half).
fn write_head(path: &Path, head: Link) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut text = Vec::with_capacity(86);
    push_u64(&mut text, head.seq);
    text.push(b':');
    text.extend_from_slice(&head.mac);
    text.push(b'\n');
    let mut file = File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Whether the log at `path`, whose last record is `last`, holds the record
/// of `head`; `what` names where the head comes from.
fn reaches(path: &Path, last: Option<Link>, head: &AuditHead, what: &str) -> Result<(), OpenError> {
    let cut = |problem: String| Err(OpenError::Cut(problem));
    let Some(link) = head.link() else {
        return cut(format!("{what} has a mac that is not 64 lowercase hex digits"));
    };
    let Some(last) = last else {
        return cut(format!(
            "the log holds no record, but {what} is at seq {}: it was emptied, deleted or replaced",
            head.seq
        ));
    };
    if last.seq < head.seq {
        return cut(format!(
            "its last record is seq {}, but {what} is at seq {}: records were removed from its end",
            last.seq, head.seq
        ));
    }
    let found = if last.seq == head.seq {
        Some(last)
    } else {
        let mut found = record_with_seq(path, head.seq)?;
        if found.is_none() {
            for backup in rotate::backups(path)? {
                found = record_with_seq(&backup, head.seq)?;
                if found.is_some() {
                    break;
                }
            }
        }
        found
    };
    match found {
        Some(record) if record == link => Ok(()),
        Some(_) => cut(format!(
            "the record at seq {} is not the one {what} names (another mac): the chain was rewritten \
             from there, or the head belongs to another log",
            head.seq
        )),
        None => cut(format!(
            "no file of the log holds seq {}, the record {what} names: the files that held it were \
             removed or replaced",
            head.seq
        )),
    }
}

/// The last whole record of `path` (none when it is missing or holds none),
/// and whether the file ends with part of a line. Reads from the end.
fn last_record(path: &Path) -> io::Result<(Option<Link>, bool)> {
    scan_back(path, Some)
}

/// The record of `path` with `seq`, found reading from the end (and stopping
/// at the first record before it).
fn record_with_seq(path: &Path, seq: u64) -> io::Result<Option<Link>> {
    let (found, _) = scan_back(path, |l| (l.seq <= seq).then_some(l))?;
    Ok(found.filter(|l| l.seq == seq))
}

/// The first whole record of `path`, newest first, for which `stop` says
/// `Some` (none when the file is missing or none does), and whether the file
/// ends with part of a line. Reads windows from the end, growing; `stop` may
/// see a record more than once.
fn scan_back(path: &Path, stop: impl Fn(Link) -> Option<Link>) -> io::Result<(Option<Link>, bool)> {
    let mut file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, false)),
        file => file?,
    };
    let len = file.metadata()?.len();
    let mut window = 16 * 1024;
    let mut buf = Vec::new();
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        buf.clear();
        (&mut file).take(len - start).read_to_end(&mut buf)?;
        let partial = buf.last().is_some_and(|&b| b != b'\n');
        // The whole lines, newest first; the oldest is whole only at the file's start.
        let whole = &buf[..buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
        let mut lines = whole
            .strip_suffix(b"\n")
            .unwrap_or(whole)
            .rsplit(|&b| b == b'\n')
            .peekable();
        while let Some(line) = lines.next() {
            if whole.is_empty() || (lines.peek().is_none() && start > 0) {
                break;
            }
            if let Ok(r) = parse(line) {
                let link = Link {
                    seq: r.seq,
                    mac: *r.mac,
                };
                if let Some(found) = stop(link) {
                    return Ok((Some(found), partial));
                }
            }
        }
        if start == 0 {
            return Ok((None, partial));
        }
        window *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("tower-apm-audit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const KEY: &[u8] = b"test key";

    /// Appends records `"event":"e<i>"` for `range`, in one batch.
    fn write(config: &AuditLog, range: std::ops::Range<u64>) {
        let now = SystemTime::now();
        let mut w = AuditWriter::open(config, now).unwrap();
        for i in range {
            w.append(&format!("\"event\":\"e{i}\""), now).unwrap();
        }
        w.end_batch().unwrap();
    }

    fn read_lines(path: &Path) -> Vec<String> {
        lines(path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    /// A log of five records, with `KEY`.
    fn five(d: &TempDir) -> (PathBuf, Vec<String>) {
        let path = d.join("app.audit");
        write(&AuditLog::new(&path).key(KEY), 0..5);
        let lines = lines(&path);
        (path, lines)
    }

    fn broken(file: &Path, line: u64, seq: u64, kind: BreakKind) -> Result<Verified, ChainBreak> {
        Err(ChainBreak {
            file: file.to_owned(),
            line,
            seq: Some(seq),
            kind,
        })
    }

    fn mac_of(line: &str) -> String {
        line[line.len() - 66..line.len() - 2].to_owned()
    }

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&[0x00, 0x0f, 0xab, 0xff]);
        let hex = hex(&bytes);
        assert_eq!(&hex[..8], b"000fabff");
        assert!(hex[8..].iter().all(|&b| b == b'0'));
    }

    #[test]
    fn the_mac_covers_the_line_up_to_the_mac_field() {
        let d = TempDir::new("mac");
        for key in [Some(KEY), None] {
            let path = d.join("app.audit");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(d.join(".app.audit.head"));
            let mut config = AuditLog::new(&path);
            if let Some(key) = key {
                config = config.key(key);
            }
            let now = SystemTime::now();
            let mut w = AuditWriter::open(&config, now).unwrap();
            w.append("\"event\":\"authn_login_fail:alice\",\"level\":\"WARN\"", now)
                .unwrap();
            w.append("", now).unwrap();
            w.end_batch().unwrap();
            let lines = lines(&path);
            let first = &lines[0];
            let body = &first[..first.find(",\"mac\":").unwrap()];
            assert_eq!(
                body,
                format!(
                    "{{\"seq\":0,\"prev\":\"{}\",\"event\":\"authn_login_fail:alice\",\"level\":\"WARN\"",
                    "0".repeat(64)
                )
            );
            let expected = match key {
                Some(key) => {
                    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
                    mac.update(body.as_bytes());
                    hex(&mac.finalize().into_bytes())
                }
                None => hex(&Sha256::digest(body.as_bytes())),
            };
            assert_eq!(
                first,
                &format!("{body},\"mac\":\"{}\"}}", std::str::from_utf8(&expected).unwrap())
            );
            // No fields: no stray comma; prev is the first record's mac.
            assert_eq!(
                lines[1],
                format!(
                    "{{\"seq\":1,\"prev\":\"{}\",\"mac\":\"{}\"}}",
                    mac_of(first),
                    mac_of(&lines[1])
                )
            );
            let v = verify_audit_log(&[&path], key).unwrap();
            assert_eq!((v.records, v.first_seq, v.last_seq), (2, 0, 1));
            assert_eq!(v.head, mac_of(&lines[1]));
        }
    }

    #[test]
    fn an_edited_byte_breaks_the_chain_at_that_record() {
        let d = TempDir::new("edit");
        let (path, mut lines) = five(&d);
        lines[2] = lines[2].replace("e2", "e7");
        rewrite(&path, &lines);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 3, 2, BreakKind::MacMismatch)
        );
    }

    #[test]
    fn a_deleted_record_breaks_the_chain_at_the_next_record() {
        let d = TempDir::new("delete");
        let (path, mut lines) = five(&d);
        lines.remove(2);
        rewrite(&path, &lines);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 3, 3, BreakKind::SeqGap { expected: 2, found: 3 })
        );
    }

    #[test]
    fn an_inserted_record_breaks_the_chain_at_the_inserted_record() {
        let d = TempDir::new("insert");
        let (path, lines) = five(&d);
        // A record forged without the key: the right seq and prev, a guessed key.
        let mut forged = lines.clone();
        let body = format!("{{\"seq\":2,\"prev\":\"{}\",\"event\":\"forged\"", mac_of(&lines[1]));
        let mac = Hasher::new(Some(b"guess")).mac(body.as_bytes());
        forged.insert(
            2,
            format!("{body},\"mac\":\"{}\"}}", std::str::from_utf8(&mac).unwrap()),
        );
        rewrite(&path, &forged);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 3, 2, BreakKind::MacMismatch)
        );
        // A copy of a real record: its mac is right, its place is not.
        let mut copied = lines.clone();
        copied.insert(3, lines[0].clone());
        rewrite(&path, &copied);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 4, 0, BreakKind::SeqGap { expected: 3, found: 0 })
        );
    }

    #[test]
    fn swapped_records_break_the_chain_at_the_first_out_of_place_record() {
        let d = TempDir::new("swap");
        let (path, mut lines) = five(&d);
        lines.swap(1, 2);
        rewrite(&path, &lines);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 2, 2, BreakKind::SeqGap { expected: 1, found: 2 })
        );
    }

    #[test]
    fn a_record_of_another_chain_breaks_the_chain_at_its_prev() {
        let d = TempDir::new("other");
        let (path, mut records) = five(&d);
        let other = d.join("other.audit");
        let now = SystemTime::now();
        let mut w = AuditWriter::open(&AuditLog::new(&other).key(KEY), now).unwrap();
        for i in 0..3 {
            w.append(&format!("\"event\":\"other{i}\""), now).unwrap();
        }
        w.end_batch().unwrap();
        records[2] = lines(&other)[2].clone();
        rewrite(&path, &records);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 3, 2, BreakKind::PrevMismatch)
        );
    }

    #[test]
    fn a_file_cut_mid_record_is_reported_as_truncated() {
        let d = TempDir::new("cut");
        let (path, lines) = five(&d);
        let cut: usize = lines[..3].iter().map(|l| l.len() + 1).sum::<usize>() + 30;
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(cut as u64).unwrap();
        drop(file);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 4, 3, BreakKind::Truncated)
        );
    }

    #[test]
    fn after_a_crash_mid_record_the_cut_line_stays_and_the_chain_goes_on() {
        let d = TempDir::new("crash");
        let (path, before) = five(&d);
        let cut: usize = before[..3].iter().map(|l| l.len() + 1).sum::<usize>() + 30;
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(cut as u64).unwrap();
        drop(file);
        // A crash mid-record: the head file never named the record being written.
        let config = AuditLog::new(&path).key(KEY);
        write_head(&config.head_path(), last_record(&path).unwrap().0.unwrap()).unwrap();
        write(&config, 3..5);
        let after = lines(&path);
        assert_eq!(after.len(), 6);
        assert_eq!(after[3], before[3][..30]);
        assert!(after[4].starts_with(&format!("{{\"seq\":3,\"prev\":\"{}\"", mac_of(&before[2]))));
        // The verifier reports the cut line; without it the chain is whole.
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 4, 3, BreakKind::Truncated)
        );
        let mut without = after.clone();
        without.remove(3);
        rewrite(&path, &without);
        assert_eq!(verify_audit_log(&[&path], Some(KEY)).unwrap().records, 5);
    }

    #[test]
    fn a_chain_continues_across_a_size_rotation() {
        let d = TempDir::new("rotate");
        let path = d.join("app.audit");
        let config = AuditLog::new(&path).key(KEY).rotation(Rotation::Size(600)).backups(10);
        write(&config, 0..12);
        // And across a restart, in the newest file.
        write(&config, 12..20);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p != &config.head_path())
            .collect();
        assert!(files.len() >= 4, "{files:?}");
        files.sort();
        files.reverse();
        let v = verify_audit_log(&files, Some(KEY)).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq), (20, 0, 19));
        assert_eq!(v.head, mac_of(lines(&path).last().unwrap()));
        // Deleting the oldest file is not seen (the chain starts later)...
        let oldest = files
            .iter()
            .find(|f| first_line(f).unwrap().unwrap().starts_with(b"{\"seq\":0,"))
            .unwrap();
        let newer: Vec<&PathBuf> = files.iter().filter(|f| *f != oldest).collect();
        assert!(verify_audit_log(&newer, Some(KEY)).unwrap().first_seq > 0);
        // ... deleting one in the middle is.
        let second = files.iter().find(|f| *f != oldest && *f != &path).unwrap();
        let gap: Vec<&PathBuf> = files.iter().filter(|f| *f != second).collect();
        assert!(matches!(
            verify_audit_log(&gap, Some(KEY)),
            Err(ChainBreak {
                line: 1,
                kind: BreakKind::SeqGap { .. },
                ..
            })
        ));
    }

    #[test]
    fn reopening_continues_the_chain() {
        let d = TempDir::new("reopen");
        let path = d.join("app.audit");
        let config = AuditLog::new(&path).key(KEY);
        write(&config, 0..3);
        write(&config, 3..5);
        let lines = lines(&path);
        assert!(lines[3].starts_with(&format!("{{\"seq\":3,\"prev\":\"{}\"", mac_of(&lines[2]))));
        let v = verify_audit_log(&[&path], Some(KEY)).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq), (5, 0, 4));
    }

    #[test]
    fn reopening_reads_back_past_long_lines() {
        let d = TempDir::new("long");
        let path = d.join("app.audit");
        let config = AuditLog::new(&path).key(KEY);
        let now = SystemTime::now();
        // A record longer than the writer's buffer and the first tail window.
        let long = format!("\"event\":\"{}\"", "x".repeat(40_000));
        let mut w = AuditWriter::open(&config, now).unwrap();
        w.append("\"event\":\"e0\"", now).unwrap();
        w.append(&long, now).unwrap();
        drop(w);
        write(&config, 2..3);
        // A long line that is not a record, after the last one.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(format!("{}\n", "y".repeat(100_000)).as_bytes()).unwrap();
        drop(file);
        let (last, partial) = last_record(&path).unwrap();
        assert_eq!((last.map(|l| l.seq), partial), (Some(2), false));
        let mut w = AuditWriter::open(&config, now).unwrap();
        assert_eq!(w.next_seq, 3);
        w.append(&long, now).unwrap();
        assert_eq!(last_record(&path).unwrap().0.map(|l| l.seq), Some(3));
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            Err(ChainBreak {
                file: path.clone(),
                line: 4,
                seq: None,
                kind: BreakKind::Malformed
            })
        );
    }

    #[test]
    fn reopening_an_empty_file_continues_from_the_newest_backup() {
        let d = TempDir::new("backup");
        let path = d.join("app.audit");
        let config = AuditLog::new(&path).key(KEY).rotation(Rotation::Daily);
        write(&config, 0..2);
        std::fs::rename(&path, d.join("app.audit.2026-11-26")).unwrap();
        write(&config, 2..4);
        std::fs::rename(&path, d.join("app.audit.2026-11-27")).unwrap();
        std::fs::write(&path, "").unwrap();
        write(&config, 4..5);
        assert!(lines(&path)[0].starts_with("{\"seq\":4,"));
        let files = [d.join("app.audit.2026-11-26"), path, d.join("app.audit.2026-11-27")];
        assert_eq!(verify_audit_log(&files, Some(KEY)).unwrap().records, 5);
    }

    #[test]
    fn a_wrong_key_fails_at_the_first_record() {
        let d = TempDir::new("key");
        let (path, _) = five(&d);
        for key in [Some(b"other key".as_slice()), None] {
            assert_eq!(
                verify_audit_log(&[&path], key),
                broken(&path, 1, 0, BreakKind::MacMismatch)
            );
        }
    }

    #[test]
    fn a_first_record_at_seq_0_must_have_a_zero_prev() {
        let d = TempDir::new("zero");
        let path = d.join("app.audit");
        let body = format!("{{\"seq\":0,\"prev\":\"{}\"", "1".repeat(64));
        let mac = Hasher::new(None).mac(body.as_bytes());
        rewrite(
            &path,
            &[format!("{body},\"mac\":\"{}\"}}", std::str::from_utf8(&mac).unwrap())],
        );
        assert_eq!(
            verify_audit_log(&[&path], None),
            broken(&path, 1, 0, BreakKind::PrevMismatch)
        );
    }

    #[test]
    fn lines_that_are_not_records_are_malformed() {
        let d = TempDir::new("malformed");
        let (path, mut lines) = five(&d);
        lines.insert(1, "hello".to_owned());
        rewrite(&path, &lines);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            Err(ChainBreak {
                file: path.clone(),
                line: 2,
                seq: None,
                kind: BreakKind::Malformed
            })
        );
        lines[1] = lines[2].replacen("\"prev\":\"", "\"prev\":\"x", 1);
        rewrite(&path, &lines);
        assert_eq!(
            verify_audit_log(&[&path], Some(KEY)),
            broken(&path, 2, 1, BreakKind::Malformed)
        );
    }

    #[test]
    fn empty_and_missing_files() {
        let d = TempDir::new("empty");
        let empty = d.join("empty.audit");
        std::fs::write(&empty, "").unwrap();
        let v = verify_audit_log(&[&empty], None).unwrap();
        assert_eq!((v.records, v.head.as_str()), (0, "0".repeat(64).as_str()));
        let missing = d.join("missing.audit");
        let err = verify_audit_log(&[&missing], None).unwrap_err();
        assert!(matches!(err.kind, BreakKind::Unreadable { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display()))
        );
    }

    #[test]
    fn fields_on_two_lines_are_refused_and_the_chain_does_not_move() {
        let d = TempDir::new("newline");
        let path = d.join("app.audit");
        let now = SystemTime::now();
        let mut w = AuditWriter::open(&AuditLog::new(&path), now).unwrap();
        let err = w.append("\"a\":1,\n\"b\":2", now).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        w.append("\"a\":1", now).unwrap();
        assert_eq!(verify_audit_log(&[&path], None).unwrap().records, 1);
    }

    #[test]
    fn a_record_is_in_the_file_when_append_returns() {
        let d = TempDir::new("through");
        let path = d.join("app.audit");
        let now = SystemTime::now();
        let mut w = AuditWriter::open(&AuditLog::new(&path), now).unwrap();
        w.append("\"a\":1", now).unwrap();
        assert_eq!(lines(&path).len(), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_does_not_advance_the_chain() {
        let now = SystemTime::now();
        let mut w = AuditWriter::open(&AuditLog::new("/dev/full").durability(Durability::EveryRecord), now).unwrap();
        let err = w.append("\"event\":\"lost\"", now).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        assert_eq!((w.next_seq, w.prev), (0, ZEROS));
        // The disk has room again: the next record starts the chain as if the
        // lost one had never been.
        let d = TempDir::new("full");
        let path = d.join("app.audit");
        w.file = RotatingFile::open(&path, Rotation::Never, 5, now)
            .unwrap()
            .sync_on_rotate();
        w.append("\"event\":\"kept\"", now).unwrap();
        let v = verify_audit_log(&[&path], None).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq), (1, 0, 0));
    }

    #[test]
    fn a_break_reads_as_one_line_a_person_can_act_on() {
        let b = ChainBreak {
            file: PathBuf::from("app.audit"),
            line: 7,
            seq: Some(6),
            kind: BreakKind::MacMismatch,
        };
        assert_eq!(
            b.to_string(),
            "app.audit line 7 (seq 6): record edited or wrong key: its mac does not match"
        );
    }

    fn link_of(line: &str) -> AuditHead {
        let seq = line["{\"seq\":".len()..line.find(',').unwrap()].parse().unwrap();
        AuditHead { seq, mac: mac_of(line) }
    }

    #[test]
    fn a_head_reads_and_writes_as_seq_colon_mac() {
        let mac = "0123456789abcdef".repeat(4);
        let head: AuditHead = format!(" 41:{} \n", mac.to_uppercase()).parse().unwrap();
        assert_eq!(
            head,
            AuditHead {
                seq: 41,
                mac: mac.clone()
            }
        );
        assert_eq!(head.to_string(), format!("41:{mac}"));
        for bad in [
            "",
            "41",
            "x:00",
            &format!("41:{}", &mac[1..]),
            &format!("-1:{mac}"),
            &format!("41:{}g", &mac[1..]),
        ] {
            let err = bad.parse::<AuditHead>().unwrap_err();
            assert!(err.to_string().contains("expected SEQ:MAC"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_kept_head_shows_a_cut_tail_a_deleted_log_and_a_rewritten_chain() {
        let d = TempDir::new("head");
        let (path, lines) = five(&d);
        let head = link_of(&lines[4]);
        let v = verify_audit_log_with_head(&[&path], Some(KEY), &head).unwrap();
        assert_eq!(v.to_head(), head);
        // An older head: the records after it are checked as usual.
        let v = verify_audit_log_with_head(&[&path], Some(KEY), &link_of(&lines[2])).unwrap();
        assert_eq!((v.records, v.last_seq), (5, 4));

        // The newest two records removed: the chain alone still holds.
        rewrite(&path, &lines[..3]);
        assert_eq!(verify_audit_log(&[&path], Some(KEY)).unwrap().records, 3);
        let cut = verify_audit_log_with_head(&[&path], Some(KEY), &head).unwrap_err();
        assert_eq!(
            cut,
            ChainBreak {
                file: path.clone(),
                line: 0,
                seq: None,
                kind: BreakKind::HeadNotReached {
                    head_seq: 4,
                    last_seq: Some(2)
                }
            }
        );
        assert!(cut.to_string().contains("removed from its end"), "{cut}");

        // All of it.
        rewrite(&path, &[]);
        let gone = verify_audit_log_with_head(&[&path], Some(KEY), &head).unwrap_err();
        assert_eq!(
            gone.kind,
            BreakKind::HeadNotReached {
                head_seq: 4,
                last_seq: None
            }
        );

        // A chain written again from seq 0 with the key: whole, but not the one kept.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(AuditLog::new(&path).head_path()).unwrap();
        let now = SystemTime::now();
        let mut w = AuditWriter::open(&AuditLog::new(&path).key(KEY), now).unwrap();
        for i in 0..6 {
            w.append(&format!("\"event\":\"rewritten{i}\""), now).unwrap();
        }
        w.end_batch().unwrap();
        assert_eq!(verify_audit_log(&[&path], Some(KEY)).unwrap().records, 6);
        assert_eq!(
            verify_audit_log_with_head(&[&path], Some(KEY), &head),
            broken(&path, 5, 4, BreakKind::HeadMismatch { head_seq: 4 })
        );

        // Older than every record given.
        let mut later = lines.clone();
        later.drain(..3);
        rewrite(&path, &later);
        let before = verify_audit_log_with_head(&[&path], Some(KEY), &link_of(&lines[1])).unwrap_err();
        assert_eq!(
            before.kind,
            BreakKind::HeadBeforeFiles {
                head_seq: 1,
                first_seq: 3
            }
        );
    }

    #[test]
    fn the_writer_keeps_its_head_next_to_the_log_after_each_batch() {
        let d = TempDir::new("headfile");
        let (path, lines) = five(&d);
        let config = AuditLog::new(&path).key(KEY);
        assert_eq!(config.head_path(), d.join(".app.audit.head"));
        let kept = std::fs::read_to_string(config.head_path()).unwrap();
        assert_eq!(kept, format!("{}\n", link_of(&lines[4])));
        let elsewhere = d.join("kept.head");
        write(&config.clone().head_file(&elsewhere), 5..6);
        let last = read_lines(&path).pop().unwrap();
        assert_eq!(
            std::fs::read_to_string(&elsewhere).unwrap().trim(),
            link_of(&last).to_string()
        );
    }

    #[test]
    fn a_restart_refuses_a_log_whose_tail_was_cut_or_that_was_deleted() {
        let d = TempDir::new("restart");
        let (path, lines) = five(&d);
        let config = AuditLog::new(&path).key(KEY);
        rewrite(&path, &lines[..3]);
        let Err(OpenError::Cut(why)) = AuditWriter::open(&config, SystemTime::now()) else {
            panic!("a cut tail was continued");
        };
        assert!(why.contains("last record is seq 2") && why.contains("seq 4"), "{why}");
        assert_eq!(read_lines(&path), lines[..3], "nothing written");

        std::fs::remove_file(&path).unwrap();
        let Err(OpenError::Cut(why)) = AuditWriter::open(&config, SystemTime::now()) else {
            panic!("a deleted log was started over");
        };
        assert!(why.contains("holds no record"), "{why}");
        assert!(!path.exists());

        // Another chain in its place: the record at the head's seq differs.
        rewrite(&path, &lines);
        let mut other = lines.clone();
        other[4] = other[4].replace(&mac_of(&lines[4]), &"0".repeat(64));
        rewrite(&path, &other);
        let Err(OpenError::Cut(why)) = AuditWriter::open(&config, SystemTime::now()) else {
            panic!("another chain was continued");
        };
        assert!(why.contains("another mac"), "{why}");

        // A head file that is not one.
        rewrite(&path, &lines);
        std::fs::write(config.head_path(), "hello\n").unwrap();
        assert!(matches!(
            AuditWriter::open(&config, SystemTime::now()),
            Err(OpenError::Cut(_))
        ));
    }

    #[test]
    fn a_restart_accepts_a_head_behind_the_log_and_checks_an_expected_head() {
        let d = TempDir::new("behind");
        let (path, lines) = five(&d);
        let config = AuditLog::new(&path).key(KEY);
        // A crash after records were synced, before the head file was rewritten.
        write_head(&config.head_path(), link_of(&lines[2]).link().unwrap()).unwrap();
        let w = AuditWriter::open(&config, SystemTime::now()).unwrap();
        assert_eq!(w.next_seq, 5);
        drop(w);
        assert_eq!(
            std::fs::read_to_string(config.head_path()).unwrap().trim(),
            link_of(&lines[4]).to_string(),
            "the head file is brought up to the log"
        );

        // A head kept elsewhere, older than the log's end: fine.
        let expecting = config.clone().expect_head(link_of(&lines[1]));
        write(&expecting, 5..7);
        // One the log does not reach (the head file gone too): refused.
        rewrite(&path, &read_lines(&path)[..4]);
        std::fs::remove_file(config.head_path()).unwrap();
        let expecting = config.clone().expect_head(link_of(&lines[4]));
        let Err(OpenError::Cut(why)) = AuditWriter::open(&expecting, SystemTime::now()) else {
            panic!("the expected head was not checked");
        };
        assert!(why.contains("AuditLog::expect_head") && why.contains("seq 4"), "{why}");
        // A head whose record went with a rotated file that was removed.
        let gone = AuditHead {
            seq: 1,
            mac: "ab".repeat(32),
        };
        rewrite(&path, &read_lines(&path)[2..]);
        let Err(OpenError::Cut(why)) = AuditWriter::open(&config.clone().expect_head(gone), SystemTime::now()) else {
            panic!("an unreachable head was accepted");
        };
        assert!(why.contains("no file of the log holds seq 1"), "{why}");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let config = AuditLog::new("app.audit").key("hunter2");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && debug.contains("<redacted>"), "{debug}");
    }
}
