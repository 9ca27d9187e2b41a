//! Which messages are running now, kept where a crash cannot lose it: one 8-byte slot per
//! running step in `inflight.slots`, set before the step runs and cleared after its commit
//! (unless the commit took the message off the queue: see [`Slot::settled`]). The writes go to
//! the page cache without an fsync, so they survive the process being killed (SIGKILL, an OOM
//! kill, an abort) — what a poison message does — at the cost of a small `pwrite` or two per
//! step. At start, the slots still set name the messages that were running when
//! the process stopped; a message found there [`QUARANTINE_AFTER`] times is dead-lettered
//! instead of run again, so one poison message cannot crash-loop the runtime. (A power cut may
//! lose the slots: the message then runs again, as any message in flight does.)

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// Crashes during a message's step after which it is quarantined in the dead-letter queue.
pub const QUARANTINE_AFTER: u32 = 3;

const SLOT: u64 = 8;

/// The slots file of a data folder.
pub struct InflightSlots {
    file: File,
    /// Free slot indexes, and the next never-used one.
    free: Mutex<(Vec<u64>, u64)>,
}

/// A running message's slot; cleared when dropped.
pub struct Slot<'a> {
    owner: &'a InflightSlots,
    index: u64,
}

impl InflightSlots {
    /// Opens the slots file and returns the ids of the messages that were running when the
    /// process last stopped; the file starts empty again.
    pub fn open(dir: &Path) -> io::Result<(InflightSlots, Vec<i64>)> {
        let path = dir.join("inflight.slots");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        let running = bytes
            .chunks_exact(SLOT as usize)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .filter(|&id| id != 0)
            .collect();
        file.set_len(0)?;
        Ok((
            InflightSlots {
                file,
                free: Mutex::new((Vec::new(), 0)),
            },
            running,
        ))
    }

    /// Marks `id` as running until the returned slot is dropped.
    pub fn claim(&self, id: i64) -> Slot<'_> {
        let index = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            match free.0.pop() {
                Some(i) => i,
                None => {
                    free.1 += 1;
                    free.1 - 1
                }
            }
        };
        self.write(index, id);
        Slot { owner: self, index }
    }

    fn write(&self, index: u64, id: i64) {
        if let Err(e) = self.file.write_all_at(&id.to_le_bytes(), index * SLOT) {
            // Best effort: without the mark, a crash during this step only loses its count.
            tracing::warn!("recording a running message: {e}");
        }
    }
}

impl Slot<'_> {
    /// Frees the slot of a message its commit took off the queue (acknowledged or
    /// dead-lettered), without clearing it: a message id is never used again, so the id left
    /// there names no pending message at the next start, and is passed over (one `pwrite`
    /// fewer per step). The slot's next claim overwrites it.
    pub fn settled(self) {
        let slot = std::mem::ManuallyDrop::new(self);
        slot.owner.release(slot.index);
    }
}

impl InflightSlots {
    fn release(&self, index: u64) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.0.push(index);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.write(self.index, 0);
        self.owner.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_left_set_are_found_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let (slots, running) = InflightSlots::open(dir.path()).unwrap();
        assert!(running.is_empty());
        let a = slots.claim(41);
        let b = slots.claim(42);
        drop(a);
        let c = slots.claim(43); // reuses a's slot
        let d = slots.claim(44);
        d.settled(); // acknowledged: its slot is free but not cleared…
        let e = slots.claim(45); // …until it is claimed again
        let g = slots.claim(47);
        g.settled(); // left holding 47: an id no pending message has, at the next start
        std::mem::forget(b); // still running when the process "dies"
        std::mem::forget(c);
        std::mem::forget(e);
        drop(slots);
        let (_, mut running) = InflightSlots::open(dir.path()).unwrap();
        running.sort();
        assert_eq!(running, vec![42, 43, 45, 47]);
        let (_, running) = InflightSlots::open(dir.path()).unwrap();
        assert!(running.is_empty(), "the file starts empty again");
    }
}
