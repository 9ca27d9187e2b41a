//! Hands back what only start-up needed once a runtime process is serving: the compiler's
//! freed heap, and the executable's code pages that start-up touched (the YAML parser, schema
//! validation, the compiler), which the kernel maps again from the page cache if they run again.

/// Trims the resident set after start-up (see the module's doc). Measured in
/// docs/performance.md: the idle RSS of `weft run` on the reference repository.
pub fn trim_after_start() {
    // SAFETY: `mi_collect` only returns memory that no allocation holds.
    unsafe { libmimalloc_sys::mi_collect(true) };
    #[cfg(target_os = "linux")]
    drop_code_pages();
}

/// Drops this executable's code pages (its `r-xp` mappings) from the process's page tables.
#[cfg(target_os = "linux")]
fn drop_code_pages() {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return;
    };
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, "r-xp", _offset, _device, _inode, path] = fields[..] else {
            continue;
        };
        if std::path::Path::new(path) != exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is one of this executable's read-only code mappings, which nothing
        // writes (no text relocations): MADV_DONTNEED only unmaps its pages from this process,
        // and the next instruction fetched from one maps it again from the unchanged file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
