//! Problems of a token file: what `lint` reports and what `edit` validates. Whether a file
//! may be trusted at all is [`crate::trust`]'s to decide; `lint` reports its verdict.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::format::{Classified, Credential, Document};
use crate::trust::{self, Trusted, Unsafe};
use crate::when::{Timestamp, format_timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// Makes `lint` exit 5: the file does not mean what it says.
    Error,
    /// Worth fixing, but the file works as written (`lint --strict` fails on these too).
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    pub severity: Severity,
    /// A short stable name for scripts: `invalid`, `duplicate`, `expired`, ...
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub message: String,
}

impl Finding {
    fn new(severity: Severity, kind: &'static str, line: Option<usize>, message: String) -> Self {
        Finding {
            severity,
            kind,
            line,
            id: None,
            message,
        }
    }

    fn with_id(mut self, id: impl ToString) -> Self {
        self.id = Some(id.to_string());
        self
    }
}

/// `lint --expiring`: a warning (kind `expiring`) for each active record that expires
/// within `window` of `now` — what a cron job alerts on before a token stops working. A
/// record kept by `rotate --grace` after its successor was issued is meant to expire, and is
/// left out.
pub(crate) fn lint_expiring(
    doc: &Document,
    now: Timestamp,
    window: std::time::Duration,
) -> Vec<Finding> {
    let replaced = doc.replacements();
    doc.counted_records()
        .filter_map(|(line, record)| {
            let expires = record
                .expires
                .filter(|_| record.expires_within(window, now))?;
            let id = record.id();
            if replaced.contains_key(id.as_str()) {
                return None;
            }
            Some(
                Finding::new(
                    Severity::Warning,
                    "expiring",
                    Some(line),
                    format!(
                        "record {id} expires at {}; issue its successor with `tokenfile rotate \
                         {id} --grace 24h --expires 90d` (without --expires it would expire with \
                         this one)",
                        format_timestamp(expires)
                    ),
                )
                .with_id(id),
            )
        })
        .collect()
}

/// Content problems: invalid lines, duplicates, expired and plaintext records, dead scopes.
pub(crate) fn lint_document(doc: &Document, now: Timestamp) -> Vec<Finding> {
    let mut findings = Vec::new();
    if doc.has_bom() {
        findings.push(Finding::new(
            Severity::Warning,
            "bom",
            Some(1),
            "the file starts with a UTF-8 byte order mark, which older readers take as part of the first credential".into(),
        ));
    }
    for (line, classified) in doc.classify() {
        let record = match classified {
            Classified::Record(record) => record,
            Classified::Invalid(why) => {
                findings.push(Finding::new(
                    Severity::Error,
                    "invalid",
                    Some(line),
                    format!("invalid line, grants nothing: {why}"),
                ));
                continue;
            }
            Classified::Duplicate(_, duplicate) => {
                let id = duplicate.id;
                findings.push(
                    Finding::new(
                        Severity::Error,
                        "duplicate",
                        Some(line),
                        format!(
                            "{duplicate}: remove this line with `tokenfile edit` (`revoke {id}` \
                             removes every line with that token)"
                        ),
                    )
                    .with_id(id),
                );
                continue;
            }
            Classified::Blank | Classified::Comment => continue,
        };
        let id = record.id();
        if let Some(expires) = record.expires.filter(|&e| e <= now) {
            findings.push(
                Finding::new(
                    Severity::Warning,
                    "expired",
                    Some(line),
                    format!(
                        "record {id} expired at {}; remove it with `tokenfile revoke {id}`",
                        format_timestamp(expires)
                    ),
                )
                .with_id(id),
            );
        }
        if let Credential::Plain(_) = record.credential {
            findings.push(
                Finding::new(
                    Severity::Warning,
                    "plaintext",
                    Some(line),
                    format!(
                        "record {id} stores its token in plaintext; `tokenfile hash` stores only its SHA-256"
                    ),
                )
                .with_id(id),
            );
        }
        for scope in record.scopes.items().iter().filter(|s| s.is_dead()) {
            findings.push(
                Finding::new(
                    Severity::Warning,
                    "dead-scope",
                    Some(line),
                    format!(
                        "record {id}: scope {scope} can never match (only `*` alone or a trailing `:*` are wildcards)"
                    ),
                )
                .with_id(id),
            );
        }
    }
    findings
}

/// Network file systems where `flock` is not shared with other hosts (or not at all).
fn network_fs_name(path: &Path) -> Option<&'static str> {
    let stat = nix::sys::statfs::statfs(path).ok()?;
    let magic = stat.filesystem_type().0 as i64;
    Some(match magic {
        0x6969 => "NFS",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x517B => "SMB",
        0x0102_1997 => "9P",
        0x00C3_6400 => "Ceph",
        0x6573_5546 => "FUSE",
        0x5346_414F => "AFS",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        _ => return None,
    })
}

/// Problems of a file that [`trust::open`] accepted: group-writable components (warnings:
/// an admin's choice), its plaintext if others can read it (an error: every reader refuses
/// it, docs/trust.md), digests others can read, a lock file or audit log that a change would
/// refuse (`audit_log`: where the audit log is), and a network file system.
pub(crate) fn lint_file(trusted: &Trusted, doc: &Document, audit_log: &Path) -> Vec<Finding> {
    let mut findings: Vec<Finding> = group_writable(&trusted.warnings).collect();
    let path = &trusted.real;
    if let Some(reason) =
        trust::exposed_reason(path, &trusted.meta, || trust::document_holds_plaintext(doc))
    {
        findings.push(Finding::new(
            Severity::Error,
            "unsafe-permissions",
            None,
            reason,
        ));
    } else if trust::readable_by_others(&trusted.meta) {
        findings.push(Finding::new(
            Severity::Warning,
            "world-readable",
            None,
            format!(
                "{} is readable by every user (mode {:o}): its digests can be attacked \
                 offline; `chmod o-r` it",
                path.display(),
                trusted.meta.mode() & 0o7777
            ),
        ));
    }
    // A full copy of the file left by a killed `edit` holds every credential, revoked ones
    // included, for as long as nobody notices it: an error, so that a cron `lint` does.
    for copy in crate::store::stale_edit_copies(path) {
        findings.push(Finding::new(
            Severity::Error,
            "stale-edit-copy",
            None,
            format!(
                "{} is a full copy of the token file left by an `edit` that was killed; \
                 remove it with `rm -- {}` (the next `tokenfile` change removes it too)",
                copy.display(),
                copy.display()
            ),
        ));
    }
    // A lock file or audit log planted by another user (docs/writing.md) is refused by the
    // next change; opened read-only, never created or followed.
    for sidecar in [&crate::store::sibling(path, ".lock"), audit_log] {
        if let Err(crate::store::SidecarError::Untrusted(why)) = crate::store::open_sidecar(
            sidecar,
            std::fs::OpenOptions::new().read(true),
            false,
            Some(trusted.meta.uid()),
        ) {
            findings.push(Finding::new(Severity::Error, "unsafe-sidecar", None, why));
        }
    }
    for copy in crate::store::saved_edit_copies(path) {
        findings.push(Finding::new(
            Severity::Warning,
            "saved-edit-copy",
            None,
            format!(
                "{} holds an edit that could not be installed (the file changed meanwhile) \
                 and every credential: re-apply it with `tokenfile edit`, then remove it with \
                 `rm -- {}`",
                copy.display(),
                copy.display()
            ),
        ));
    }
    if let Some(fs_name) = network_fs_name(path) {
        findings.push(Finding::new(
            Severity::Warning,
            "network-fs",
            None,
            format!(
                "{} is on a network file system ({fs_name}): its lock is not shared between \
                 hosts; write it from one admin host only and ship it to the others",
                path.display()
            ),
        ));
    }
    findings
}

/// What `lint` reports of a file that [`trust::open`] refused: each reason an error, each
/// group-writable component a warning.
pub(crate) fn lint_refusal(why: &Unsafe) -> Vec<Finding> {
    let errors = why
        .reasons
        .iter()
        .map(|r| Finding::new(Severity::Error, "unsafe-permissions", None, r.clone()));
    errors.chain(group_writable(&why.warnings)).collect()
}

/// The group-writable components [`trust`] noticed, as warnings: an admin's choice.
fn group_writable(warnings: &[String]) -> impl Iterator<Item = Finding> + '_ {
    warnings
        .iter()
        .map(|w| Finding::new(Severity::Warning, "group-writable", None, w.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Digest;
    use crate::when::parse_timestamp;

    fn kinds(file: &str) -> Vec<(&'static str, Option<usize>)> {
        let now = parse_timestamp(b"2026-06-01T00:00:00Z").unwrap();
        lint_document(&Document::parse(file.as_bytes()), now)
            .into_iter()
            .map(|f| (f.kind, f.line))
            .collect()
    }

    #[test]
    fn finds_each_kind_by_line() {
        let hashed = format!("sha256:{}", Digest::of(b"a").to_hex());
        let file = format!(
            "# c\n{hashed}\tread\nbad\t\na\twrite\nold\tx\t\t\t2026-01-01T00:00:00Z\n{hashed}\tr*ad\n"
        );
        assert_eq!(
            kinds(&file),
            vec![
                ("invalid", Some(3)),
                ("duplicate", Some(4)),
                ("expired", Some(5)),
                ("plaintext", Some(5)),
                ("duplicate", Some(6)),
            ]
        );
    }

    #[test]
    fn world_writable_is_unsafe() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt;
        let unsafe_ = |path: &Path| matches!(trust::open(path), Err(trust::Refusal::Unsafe(_)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        fs::write(&path, b"").unwrap();
        assert!(trust::open(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(unsafe_(&path));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(unsafe_(&path));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(trust::open(&path).is_ok());
    }
}
