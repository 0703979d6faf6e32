import CatenaCore

/// What a failed fsync leaves behind, and why the store does not believe it after a restart.
///
/// After a writeback error Linux marks the failed pages clean: reads keep returning the bytes,
/// a later fsync succeeds without writing them, and a power cut loses them ("fsyncgate"). A
/// store reopened after such a failure would find those records, sync them "successfully" and
/// call them durable — a replica would then forward and acknowledge writes that are not on
/// disk. So when a sync fails the store records, in a small file of its own (`SYNCFAILED`:
/// temp, fsync, rename, directory fsync), the last LSN it had made durable; the next open
/// truncates the log after it — those records were never acknowledged by this node — and removes
/// the file. (If recording fails too, the disk is beyond this: it is logged as critical.)
extension Store {
    var syncFailurePath: String { dir.path + "/SYNCFAILED" }

    /// Called once, when a sync fails: remembers what was durable before it.
    func recordSyncFailure(durableThrough lsn: LSN) {
        var w = ByteWriter(capacity: 28)
        w.u32(0x4C49_4146)  // "FAIL"
        w.u64(lsn.epoch); w.u64(lsn.seq)
        w.u64(XXH3.hash(w.bytes))
        do {
            try Store.writeAtomically(fs: fs, dir: dir, path: syncFailurePath, bytes: w.bytes)
        } catch {
            logger.critical("could not record the fsync failure; after a restart this node may trust records the disk does not hold",
                            metadata: .catena([.error: "\(error)"]))
        }
    }

    /// At open: if a sync failed before, truncates what followed the last durable record then.
    func distrustWritesAfterSyncFailure() async throws(CatenaError) {
        guard fs.fileExists(syncFailurePath) else { return }
        let file = try fs.open(syncFailurePath, mode: .read)
        let bytes = try file.read(at: 0, count: 64)
        file.close()
        var r = ByteReader(bytes)
        guard bytes.count == 28, r.u32() == 0x4C49_4146,
              XXH3.hash(bytes[0..<20]) == bytes.withUnsafeBytes({ $0.le(20, as: UInt64.self) }) else {
            throw CatenaError(.corruption, "\(syncFailurePath) is damaged; it records where the log was durable before an fsync failed")
        }
        let durable = LSN(epoch: r.u64(), seq: r.u64())
        if lastEnqueuedLSN.seq > durable.seq {
            let removed = try await truncate(after: durable)
            logger.warning("an fsync failed before the restart: truncated what the page cache showed after the last durable record",
                           metadata: .catena([.lsn: "\(durable)", .recordsRemoved: "\(removed)"]))
        }
        try fs.remove(syncFailurePath)
        try fs.syncDirectory(dir.path)
    }
}
