import CatenaCore
import Logging
import NIOConcurrencyHelpers
import Synchronization

/// The commit watermark and truncation.
extension Store {
    /// The commit watermark: the highest LSN known to be on every replica (persisted).
    public var commitWatermark: LSN { state.withLock { $0.persistent.commitWatermark } }

    /// The log on disk: its segments and their bytes (what has been written to them).
    public var diskUsage: (segments: Int, bytes: UInt64) {
        state.withLock { s in (s.segments.count, s.segments.reduce(0) { $0 + $1.writtenSize }) }
    }

    /// The highest LSN whose history compaction has dropped; asking for records after an LSN
    /// below it needs a full copy.
    public var compactedThrough: LSN { state.withLock { $0.persistent.compactedThrough } }

    /// Raises and persists the commit watermark. It never goes down, never above the highest
    /// durable LSN, and not above a truncation that is pending.
    public func setCommitWatermark(_ lsn: LSN) async throws(CatenaError) {
        try await runBlocking(on: readerPool) { [self] () throws(CatenaError) in
            try stateFileLock.withLock { _ throws(CatenaError) in
                let next: PersistentState = try state.withLock { (s) throws(CatenaError) -> PersistentState in
                    guard lsn <= s.durable else {
                        throw CatenaError(.invalidArgument, "commit watermark \(lsn) is above the highest durable LSN \(s.durable)")
                    }
                    guard lsn >= s.persistent.commitWatermark else {
                        throw CatenaError(.invalidArgument, "commit watermark cannot go back from \(s.persistent.commitWatermark) to \(lsn)")
                    }
                    if let cut = s.pendingTruncations.min(), lsn.seq > cut {
                        throw CatenaError(.invalidArgument, "commit watermark \(lsn) is above seq \(cut), after which a pending truncation removes the log")
                    }
                    var p = s.persistent
                    p.commitWatermark = lsn
                    return p
                }
                try Store.writeAtomically(fs: fs, dir: dir, path: dir.state, bytes: next.encoded())
                let noted = notedCommit.load(ordering: .relaxed)
                state.withLock { s in
                    s.persistent.commitWatermark = max(s.persistent.commitWatermark, lsn)
                    s.refreshCommitHint(noted: noted)
                }
            }
        }
    }

    /// Tells the store through which LSN the chain is known to have committed, as the node
    /// learns it (after each acknowledgement). The store keeps, per key, the newest version at
    /// or below it and every newer one, so that a CRAQ read sent to the committed version of a
    /// dirty key finds it (``read(_:range:at:)``); older ones go. Versions at or below the
    /// persisted ``commitWatermark`` count as committed whatever is noted.
    ///
    /// Cheap enough for the replication hot path: one atomic store, no lock. The versions the
    /// new hint passes are forgotten when the store next indexes records (or raises the
    /// watermark, or compacts). It may go down (a node that rebuilds its replica machine notes
    /// `.zero`): versions already forgotten stay forgotten, later overwrites are kept from the
    /// lower hint. Only `lsn.seq` counts: seqs are contiguous across epochs.
    public func noteCommitted(through lsn: LSN) {
        notedCommit.store(lsn.seq, ordering: .relaxed)
    }

    /// Records (persisted) that history through `lsn` is not in this log: a full copy of a
    /// compacted log skipped it. Later requests for records after an LSN below it are answered
    /// ``CatenaError/Code/historyCompacted``. Never goes down.
    public func markCompacted(through lsn: LSN) async throws(CatenaError) {
        try await runBlocking(on: readerPool) { [self] () throws(CatenaError) in
            try persistState { $0.compactedThrough = max($0.compactedThrough, lsn) }
        }
    }

    func persistState(_ update: (inout PersistentState) -> Void) throws(CatenaError) {
        try stateFileLock.withLock { _ throws(CatenaError) in
            let next = state.withLock { s in
                var p = s.persistent
                update(&p)
                return p
            }
            try Store.writeAtomically(fs: fs, dir: dir, path: dir.state, bytes: next.encoded())
            state.withLock { s in s.persistent = next }
        }
    }

    /// Removes every record whose seq is after `lsn`'s (records an old head wrote that the chain
    /// never committed); `lsn` should be the LSN of the last record to keep. Deletes later
    /// segments newest first and rewrites the one it cuts (crash-safe), then rebuilds the index.
    /// Refused below the commit watermark's seq — except `.zero`: discarding the whole log (a
    /// node that copies everything anew from the tail) is allowed at any watermark; the
    /// watermark is then reset to zero and persisted *before* any record is removed, so a
    /// crash part-way never leaves a shortened log claiming a watermark beyond its end, and
    /// ``compactedThrough`` is reset once the log is empty (after a crash in between it stays,
    /// which only claims less history than the log has; discarding again resets it).
    /// Returns how many records were removed.
    ///
    /// The call resets the enqueue tail to `lsn` and queues the truncation in one step: appends
    /// enqueued after the call continue from `lsn` and survive it; appends enqueued before it
    /// may be acknowledged and then removed. Until it completes, the watermark cannot be raised
    /// past `lsn`. If it fails part-way, the store refuses writes until reopened (start-up
    /// re-reads what is on disk; truncating again finishes the job).
    @discardableResult
    public func truncate(after lsn: LSN) async throws(CatenaError) -> Int {
        let done = AppendTicket()
        let removed = NIOLockedValueBox(0)
        let schedule: Bool = try state.withLock { (s) throws(CatenaError) -> Bool in
            try Store.checkWritable(s)
            let discardAll = lsn.seq == 0
            guard discardAll || lsn.seq >= s.persistent.commitWatermark.seq else {
                throw CatenaError(.belowCommitWatermark, "cannot truncate after seq \(lsn.seq): the commit watermark is \(s.persistent.commitWatermark)")
            }
            if lsn.seq < s.tail.seq { s.tail = lsn }
            s.pendingTruncations.append(lsn.seq)
            return s.enqueueOp(.task { [self] in
                do throws(CatenaError) {
                    let n = try maintenanceLock.withLock { _ throws(CatenaError) in
                        if discardAll && state.withLock({ $0.persistent.commitWatermark }) != .zero {
                            // The watermark belongs to the log being discarded: reset it first.
                            try persistState { $0.commitWatermark = .zero }
                        }
                        let removed = try performTruncate(after: lsn)
                        if discardAll && state.withLock({ $0.persistent.compactedThrough }) != .zero {
                            // Nothing is left whose history could be missing.
                            try persistState { $0.compactedThrough = .zero }
                        }
                        return removed
                    }
                    removed.withLockedValue { $0 = n }
                    done.complete(.success(()))
                } catch {
                    state.withLock { s in s.lifecycle = .failed(error) }
                    logger.critical("truncation failed part-way; refusing writes until reopened", metadata: .catena([.error: "\(error)"]))
                    done.complete(.failure(error))
                }
                state.withLock { s in
                    if let i = s.pendingTruncations.firstIndex(of: lsn.seq) { s.pendingTruncations.remove(at: i) }
                }
            })
        }
        if schedule { startWriter() }
        try await done.durable()
        return removed.withLockedValue { $0 }
    }

    /// Runs on the writer thread, so no append is in flight.
    private func performTruncate(after lsn: LSN) throws(CatenaError) -> Int {
        let segments = state.withLock { $0.segments }
        let before = state.withLock { s in s.segments.reduce(0) { $0 + $1.recordCount } }
        // Newest first: delete whole segments that start after `lsn`.
        for seg in segments.reversed() where seg.header.firstLSN.seq > lsn.seq {
            try fs.remove(dir.segment(seg.id))
            try fs.remove(dir.hint(seg.id))
            try fs.syncDirectory(dir.path)
            logger.info("truncate: removed segment", metadata: .catena([.segment: "\(seg.id)"]))
        }
        // Rewrite the segment that `lsn` cuts: copy the bytes before its first later record.
        if let cut = segments.last(where: { $0.header.firstLSN.seq <= lsn.seq }), cut.lastLSN.seq > lsn.seq {
            var scanner = SegmentScanner(file: cut.file, segment: cut.id, from: UInt64(cut.header.size), end: cut.size)
            var cutOffset = cut.size
            while let item = try scanner.next() {
                if case .record(let r, let loc) = item, r.lsn.seq > lsn.seq {
                    cutOffset = loc.offset
                    break
                }
            }
            let newID = state.withLock { s in
                defer { s.nextSegmentID += 1 }
                return s.nextSegmentID
            }
            let header = SegmentHeader(id: newID, firstLSN: cut.header.firstLSN, createdAt: configuration.now(), replaces: [cut.id])
            let tmp = dir.segment(newID) + ".tmp"
            let out = try fs.open(tmp, mode: .createNew)
            defer { out.close() }
            try out.write(header.encoded(), at: 0)
            var at = UInt64(cut.header.size)
            var outAt = UInt64(header.size)
            while at < cutOffset {
                let n = Int(min(UInt64(4 << 20), cutOffset - at))
                let chunk = try cut.file.read(at: at, count: n)
                guard chunk.count == n else { throw CatenaError(.ioFailure, "\(cut.file.path): short read while truncating") }
                try out.write(chunk, at: outAt)
                at += UInt64(n)
                outAt += UInt64(n)
            }
            try out.sync()
            try fs.rename(tmp, to: dir.segment(newID))
            try fs.syncDirectory(dir.path)
            try fs.remove(dir.segment(cut.id))
            try fs.remove(dir.hint(cut.id))
            try fs.syncDirectory(dir.path)
        }
        // Rebuild from what is on disk now.
        let names = try fs.contentsOfDirectory(dir.path)
        let recovered = try Recovery(fs: fs, dir: dir, logger: logger)
            .open(names: names, atStartUp: false, notedCommit: notedCommit.load(ordering: .relaxed))
        // Old handles are not closed: readers may still hold them; they close when released.
        state.withLock { s in
            // The tail stays: appends queued after this truncation continue from the cut.
            s.adopt(recovered)
            s.retrackUploads(timeout: configuration.abandonedUploadTimeout.nanoseconds)
        }
        let after = recovered.segments.reduce(0) { $0 + $1.recordCount }
        let removed = max(0, before - after)
        logger.log(level: removed > 0 ? .notice : .info, "truncated log", metadata: .catena([.lsn: "\(lsn)", .recordsRemoved: "\(removed)"]))
        return removed
    }
}
