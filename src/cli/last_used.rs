//! What `list` and `prune` know of each record's use: the last-used sidecars (`crate::seen`)
//! read and merged, and the rules that turn them into "unused for that long".

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Context;
use super::output::note;
use crate::error::Result;
use crate::format::Document;
use crate::format::Record;
use crate::seen::{self, Belongs, Seen, SeenById};
use crate::when::Timestamp;

/// The merged figures, and whether any sidecar gave them.
pub(crate) struct Figures {
    pub(crate) by_id: SeenById,
    /// At least one sidecar was read (an empty one counts: `serve` ran and saw nothing).
    pub(crate) any: bool,
    /// The file's own sidecar, for messages.
    pub(crate) default: PathBuf,
    /// Since when every sidecar read has been gathering: the latest of their starts. Before
    /// it, a use on some host may have gone unseen.
    pub(crate) observed_since: Option<Timestamp>,
    /// `--seen` files that could not be used (missing, corrupt, another file's, untrusted).
    pub(crate) unusable: Vec<PathBuf>,
}

impl Figures {
    pub(crate) fn of(&self, record: &Record) -> Option<&Seen> {
        self.by_id.get(record.id().as_str())
    }
}

/// The file's own sidecar `<file>.seen` (it must name this file) and every `extra` one (from
/// another host, where the file may have another path: then it must have a row for one of
/// `doc`'s records), latest use winning. A sidecar that cannot be used is a warning naming
/// it, never a failure: the figures are advice.
pub(crate) fn load(ctx: &Context, doc: &Document, extra: &[PathBuf]) -> Result<Figures> {
    let records: HashSet<String> = doc
        .counted_records()
        .map(|(_, record)| record.id().to_string())
        .collect();
    let is_record = |id: &str| records.contains(id);
    let target = ctx.store.target()?;
    let default = seen::sidecar_of(&target);
    let mut figures = Figures {
        by_id: SeenById::new(),
        any: false,
        default: default.clone(),
        observed_since: None,
        unusable: Vec::new(),
    };
    let mut add = |path: &Path, own: bool| {
        let belongs = match own {
            true => Belongs::SameFile,
            false => Belongs::SharesARecord(&is_record),
        };
        match seen::read(path, &target, belongs) {
            Ok(Some(found)) => {
                figures.any = true;
                figures.observed_since = figures.observed_since.max(found.since);
                seen::merge(&mut figures.by_id, found.rows);
            }
            Ok(None) if own => {}
            Ok(None) => {
                figures.unusable.push(path.to_path_buf());
                note(&format!(
                    "warning: the last-used sidecar {} does not exist; ignored",
                    path.display()
                ));
            }
            Err(e) => {
                if !own {
                    figures.unusable.push(path.to_path_buf());
                }
                note(&format!(
                    "warning: ignoring the last-used sidecar {}: it {e}",
                    path.display()
                ));
            }
        }
    };
    add(&default, true);
    for path in extra {
        add(path, false);
    }
    Ok(figures)
}

/// Whether `record` has not been used for `window` at `now`. A record never seen is unused
/// since the later of its creation and the start of the figures (`observed_since`): a token
/// minted yesterday is not "unused for 90 days", and neither is one that sidecars begun
/// yesterday have not seen yet. One with neither a use, a creation time nor figures counts as
/// unused.
pub(crate) fn unused_for(
    record: &Record,
    seen: Option<&Seen>,
    window: Duration,
    now: Timestamp,
    observed_since: Option<Timestamp>,
) -> bool {
    let never_seen_since = record.created.max(observed_since);
    let Some(since) = seen.map(|s| s.last_used).or(never_seen_since) else {
        return true;
    };
    match time::Duration::try_from(window)
        .ok()
        .and_then(|w| now.checked_sub(w))
    {
        Some(cutoff) => since <= cutoff,
        // A window reaching before any representable time: nothing is that old.
        None => false,
    }
}

/// `3d ago`, `5h ago`, `12m ago`, `40s ago`: the largest whole unit, for a person.
pub(crate) fn ago(then: Timestamp, now: Timestamp) -> String {
    let secs = (now - then).whole_seconds();
    if secs < 0 {
        // Another host's clock ahead of this one.
        return "just now".into();
    }
    let (n, unit) = match secs {
        s if s >= 86_400 => (s / 86_400, "d"),
        s if s >= 3_600 => (s / 3_600, "h"),
        s if s >= 60 => (s / 60, "m"),
        s => (s, "s"),
    };
    format!("{n}{unit} ago")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::when::parse_timestamp;

    fn at(text: &str) -> Timestamp {
        parse_timestamp(text.as_bytes()).unwrap()
    }

    #[test]
    fn relative_times() {
        let now = at("2026-06-10T00:00:00Z");
        assert_eq!(ago(at("2026-06-07T00:00:00Z"), now), "3d ago");
        assert_eq!(ago(at("2026-06-09T19:00:00Z"), now), "5h ago");
        assert_eq!(ago(at("2026-06-09T23:59:20Z"), now), "40s ago");
        assert_eq!(ago(at("2026-06-11T00:00:00Z"), now), "just now");
    }
}
