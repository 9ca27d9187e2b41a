//! The build driver: writes every instance's emitted bundle into an output folder. The
//! compiler's only filesystem write ([`crate::repo`] and [`crate::git`] only read).

use std::io;
use std::path::Path;

use rayon::prelude::*;

use crate::emit;
use crate::model::Project;
use crate::plan::Plan;

/// Writes every instance's bundle into `out/<customer>/<integration>/`, in parallel. Returns
/// each bundle's folder (relative to `out`) and content hash.
pub fn write_bundles(
    out: &Path,
    plans: &[Plan],
    project: &Project,
) -> io::Result<Vec<(String, String)>> {
    write_bundles_with_progress(out, plans, project, &|| {})
}

/// [`write_bundles`], calling `written` after each bundle (for a progress bar).
pub fn write_bundles_with_progress(
    out: &Path,
    plans: &[Plan],
    project: &Project,
    written: &(dyn Fn() + Sync),
) -> io::Result<Vec<(String, String)>> {
    write_bundles_for(out, plans, project, emit::Targets::default(), written)
}

/// [`write_bundles_with_progress`] for `targets` (docker-compose, Kubernetes).
pub fn write_bundles_for(
    out: &Path,
    plans: &[Plan],
    project: &Project,
    targets: emit::Targets,
    written: &(dyn Fn() + Sync),
) -> io::Result<Vec<(String, String)>> {
    let ports = emit::host_ports(plans);
    plans
        .par_iter()
        .map(|plan| {
            let rel = emit::bundle_dir(plan);
            let dir = out.join(&rel);
            std::fs::create_dir_all(&dir).map_err(|e| {
                io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
            })?;
            let files = emit::bundle_for(plan, project, targets, ports[&rel]);
            for f in &files.files {
                let path = dir.join(f.name);
                // Unchanged files are left alone: rebuilds are cheap and mtimes stay meaningful.
                if std::fs::read(&path).is_ok_and(|old| old == f.contents.as_bytes()) {
                    continue;
                }
                std::fs::write(&path, &f.contents).map_err(|e| {
                    io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
                })?;
            }
            written();
            Ok((rel, files.content_hash))
        })
        .collect()
}
