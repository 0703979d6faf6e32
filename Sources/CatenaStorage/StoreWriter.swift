import CatenaCore
import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The write path: enqueue, the group-commit writer thread and the syncer thread.
extension Store {
    /// Enqueues records for appending, in order, and returns a ticket to await durability.
    ///
    /// Checks synchronously — so nothing is enqueued if it fails — that the store is writable,
    /// each value fits ``StoreConfiguration/maxValueSize``, the first record's LSN directly
    /// follows the last enqueued one (seq + 1, epoch not lower; any seq on an empty log) and the
    /// rest follow each other, and every manifest's chunks were appended. A failed append leaves
    /// nothing visible.
    public func enqueue(_ records: [EncodedRecord]) throws(CatenaError) -> AppendTicket {
        try enqueue(records, allowingGaps: false)
    }

    /// ``enqueue(_:)``, where `allowingGaps` lets seqs skip (only increase): installing a full
    /// copy of a log compaction has thinned. Record ``markCompacted(through:)`` after.
    public func enqueue(_ records: [EncodedRecord], allowingGaps: Bool) throws(CatenaError) -> AppendTicket {
        guard !records.isEmpty else { throw CatenaError(.invalidArgument, "append needs at least one record") }
        var bytes = 0
        for r in records {
            if r.header.valueLength > configuration.maxValueSize && r.type != .manifest {
                throw CatenaError(.valueTooLarge, "value of \(r.header.valueLength) bytes for key '\(r.key)' exceeds the \(configuration.maxValueSize)-byte record limit; store it chunked")
            }
            bytes += r.count
        }
        let ticket = AppendTicket()
        let timeout = configuration.abandonedUploadTimeout.nanoseconds
        let schedule: Bool = try state.withLock { (s) throws(CatenaError) -> Bool in
            try Store.checkWritable(s)
            var previous = s.tail
            var tracker = s.uploadTracker
            for r in records {
                let lsn = r.lsn
                let follows = previous == .zero ? lsn.seq >= 1
                    : ((allowingGaps ? lsn.seq > previous.seq : lsn.seq == previous.seq + 1) && lsn.epoch >= previous.epoch)
                guard follows else {
                    throw CatenaError(.lsnOutOfOrder, "record \(lsn) does not follow the log's end \(previous)")
                }
                previous = lsn
                try tracker.track(r, timeout: timeout, strict: false)
            }
            s.tail = previous
            s.uploadTracker = tracker
            return s.enqueueOp(.append(PendingAppend(records: records, bytes: bytes, ticket: ticket)))
        }
        if schedule { startWriter() }
        return ticket
    }

    /// Whether ``enqueue(_:)`` would take `record` after what is enqueued now, apart from its
    /// LSN: the store is writable, the value fits, and a chunk, manifest or upload record fits
    /// its upload. The head checks a write with this before giving it an LSN (`strict`: a
    /// part, completion or abort of an upload that is not open is refused; replicas pass
    /// false, see ``UploadTracker``).
    public func check(_ record: EncodedRecord, strict: Bool = true) throws(CatenaError) {
        try check([record], strict: strict)
    }

    /// Whether ``enqueue(_:)`` would take `records`, in order, after what is enqueued now,
    /// apart from their LSNs (see ``check(_:strict:)-(EncodedRecord,_)``).
    public func check(_ records: [EncodedRecord], strict: Bool = true) throws(CatenaError) {
        let timeout = configuration.abandonedUploadTimeout.nanoseconds
        for record in records where record.header.valueLength > configuration.maxValueSize && record.type != .manifest {
            throw CatenaError(.valueTooLarge, "value of \(record.header.valueLength) bytes for key '\(record.key)' exceeds the \(configuration.maxValueSize)-byte record limit; store it chunked")
        }
        try state.withLock { (s) throws(CatenaError) in
            try Store.checkWritable(s)
            guard records.contains(where: { $0.type == .chunk || $0.type == .manifest || $0.type.isUploadRecord }) else { return }
            var tracker = s.uploadTracker
            for record in records { try tracker.track(record, timeout: timeout, strict: strict) }
        }
    }

    /// Appends records and returns once they are durable. See ``enqueue(_:)``.
    public func append(_ records: [EncodedRecord]) async throws(CatenaError) {
        try await enqueue(records).durable()
    }

    /// Appends one record and returns once it is durable.
    public func append(_ record: Record) async throws(CatenaError) {
        try await enqueue([try record.encoded()]).durable()
    }

    /// Queues a writer task (runs even on a failed store: close() relies on it).
    func submit(_ op: WriterOp) {
        if state.withLock({ $0.enqueueOp(op) }) { startWriter() }
    }

    /// Starts the writer thread's loop (after `enqueueOp` said it is not running).
    func startWriter() {
        writerPool.submit { [self] _ in drain() }
    }

    /// The writer loop: runs on `writerPool`'s one thread until the queue is empty.
    ///
    /// Writing and syncing are pipelined: the writer copies batch N+1 into the page cache while
    /// the syncer thread fsyncs batch N, so the device never idles while the CPU copies.
    private func drain() {
        let delayNanos = configuration.groupCommitDelay.nanoseconds
        let delayMinAppends = configuration.groupCommitDelayMinAppends
        let delayMaxAppends = configuration.groupCommitDelayMaxAppends
        let maxBytes = configuration.groupCommitMaxBytes
        let oneCallPerSync = configuration.durability == .always
        while true {
            // While a sync is in flight, write a new batch only once it is worth a syscall of its
            // own (pipelining large values); small records wait and share the next fsync.
            if Store.writerWaitsForSync(queuedBytes: state.withLock { $0.queuedBytes }) {
                unsyncedBatches.waitForZero()
            }
            enum Work { case appends([PendingAppend], Int), task(@Sendable () -> Void) }
            func take(_ s: inout State, into batch: inout [PendingAppend], bytes: inout Int) {
                while case .append(let p)? = s.queue.first {
                    if !batch.isEmpty && (oneCallPerSync || bytes + p.bytes > maxBytes) { break }
                    _ = s.popOp()
                    s.queuedBytes -= p.bytes
                    batch.append(p)
                    bytes += p.bytes
                }
            }
            let work: Work? = state.withLock { s in
                guard !s.queueIsEmpty else {
                    s.writerScheduled = false
                    return nil
                }
                if case .task(let t)? = s.queue.first {
                    _ = s.popOp()
                    return .task(t)
                }
                var batch: [PendingAppend] = []
                var bytes = 0
                take(&s, into: &batch, bytes: &bytes)
                return .appends(batch, bytes)
            }
            switch work {
            case nil:
                return
            case .task(let t):
                // Tasks (truncation, close) see a quiet log: nothing written but unsynced.
                waitUntilSynced()
                t()
            case .appends(var batch, var bytes):
                if delayNanos > 0 && !oneCallPerSync && bytes < maxBytes && batch.count >= delayMinAppends && batch.count < delayMaxAppends {
                    var ts = timespec(tv_sec: Int(delayNanos / 1_000_000_000), tv_nsec: Int(delayNanos % 1_000_000_000))
                    nanosleep(&ts, nil)
                    state.withLock { s in take(&s, into: &batch, bytes: &bytes) }
                }
                writeBatch(batch, bytes: bytes)
            }
        }
    }

    /// Queued bytes from which the writer writes while a sync is still in flight.
    static let pipelineMinBytes = 1 << 20

    /// Whether the writer, with `queuedBytes` waiting, waits for the sync in flight before it
    /// writes again (see `drain`).
    private static func writerWaitsForSync(queuedBytes: Int) -> Bool {
        queuedBytes < pipelineMinBytes
    }

    /// Blocks the writer until the syncer has acknowledged (or failed) every written batch.
    private func waitUntilSynced() {
        unsyncedBatches.waitForZero()
    }

    /// Writes one group commit (rolling the segment if needed) and hands it to the syncer.
    private func writeBatch(_ batch: [PendingAppend], bytes: Int) {
        if case .failed(let error) = state.withLock({ $0.lifecycle }) {
            failAppends(batch, error: CatenaError(.ioFailure, "store refuses writes after an I/O failure (\(error.message)); reopen it"), poison: false)
            return
        }
        var created = false
        var chunks: [[UInt8]] = []
        chunks.reserveCapacity(batch.reduce(0) { $0 + $1.records.count })
        for p in batch { for r in p.records { chunks.append(r.bytes) } }
        let firstLSN = batch[0].records[0].lsn

        let started = ContinuousClock.now
        // Roll the active segment when the batch does not fit (a batch is never split).
        let active: (file: any StorageFile, id: UInt64, offset: UInt64, zeroedEnd: UInt64)
        do {
            active = try prepareActiveSegment(forBytes: bytes, firstLSN: firstLSN, created: &created)
        } catch {
            failAppends(batch, error: error, poison: false)
            return
        }
        let end = active.offset + UInt64(bytes)
        var zeros = zeroFill(after: end, batchBytes: bytes, zeroedEnd: active.zeroedEnd)
        do {
            do {
                try active.file.write(zeros.map { chunks + [$0] } ?? chunks, at: active.offset)
            } catch where error.code == .diskFull && zeros != nil {
                // The zeros are an optimisation: a batch that fits without them is written.
                zeros = nil
                try active.file.truncate(to: active.offset)
                try active.file.write(chunks, at: active.offset)
            }
        } catch {
            // Undo the partial write so nothing of it is ever read back, then fail this batch and
            // everything queued behind it (their LSNs follow this batch's).
            state.withLock { s in
                if let i = s.segments.lastIndex(where: { $0.id == active.id }) { s.segments[i].zeroedEnd = 0 }
            }
            do {
                try active.file.truncate(to: active.offset)
                if created { try dropEmptySegment(active.id) }
                failAppends(batch, error: error, poison: false)
            } catch let undo {
                failAppends(batch, error: CatenaError(error.code, "\(error.message); undo failed: \(undo.message)"), poison: true)
            }
            return
        }
        unsyncedBatches.add(1)
        enum Sync { case running, here, onSyncer }
        let sync: Sync = state.withLock { s in
            if let i = s.segments.lastIndex(where: { $0.id == active.id }) {
                s.segments[i].writtenSize = end
                if let zeros { s.segments[i].zeroedEnd = end + UInt64(zeros.count) }
            }
            s.writtenLSN = batch[batch.count - 1].records.last!.lsn
            s.written.append(WrittenBatch(appends: batch, bytes: bytes, file: active.file, segment: active.id, offset: active.offset, createdSegment: created,
                                        started: started))
            if s.syncerScheduled { return .running }
            s.syncerScheduled = true
            return Store.writerWaitsForSync(queuedBytes: s.queuedBytes) ? .here : .onSyncer
        }
        switch sync {
        case .running:
            break
        case .here:
            // The writer would only wait for this sync (see `drain`): it syncs the batch itself,
            // sparing the hand-over to the syncer thread and back (two thread switches per
            // batch, most of a small write's cost in the store).
            syncLoop()
        case .onSyncer:
            syncerPool.submit { [self] _ in syncLoop() }
        }
    }

    /// The syncer loop: fsyncs everything written so far (one fsync per file for any number of
    /// batches), then indexes and acknowledges in order. Runs on the syncer thread, or on the
    /// writer thread when it would only wait for it (`writeBatch`); never on both at once
    /// (`syncerScheduled`).
    private func syncLoop() {
        let sync = configuration.durability != .none
        let oneCallPerSync = configuration.durability == .always
        while true {
            let taken: [WrittenBatch]? = state.withLock { s in
                guard !s.written.isEmpty else {
                    s.syncerScheduled = false
                    return nil
                }
                let n = oneCallPerSync ? 1 : s.written.count
                let taken = Array(s.written.prefix(n))
                s.written.removeFirst(n)
                return taken
            }
            guard let taken else { return }
            var syncs = 0
            var failure: CatenaError?
            if case .failed(let error) = state.withLock({ $0.lifecycle }) {
                failure = CatenaError(.ioFailure, "store refuses writes after an I/O failure (\(error.message)); reopen it")
            } else if sync {
                do {
                    var synced: [ObjectIdentifier] = []
                    for b in taken where !synced.contains(ObjectIdentifier(b.file)) {
                        let start = ContinuousClock.now
                        try b.file.sync()
                        instruments.fsync.recordNanoseconds((ContinuousClock.now - start).nanosecondsClamped)
                        synced.append(ObjectIdentifier(b.file))
                        syncs += 1
                    }
                    if taken.contains(where: \.createdSegment) {
                        let start = ContinuousClock.now
                        try fs.syncDirectory(dir.path)
                        instruments.fsync.recordNanoseconds((ContinuousClock.now - start).nanosecondsClamped)
                        syncs += 1
                    }
                } catch {
                    failure = error
                }
            }
            if let failure {
                // What reached the disk is unknown: refuse all writes until reopened.
                let (rest, writtenDropped, durable): ([PendingAppend], Int, LSN?) = state.withLock { s in
                    let first = s.lifecycle.isOpen
                    s.lifecycle = .failed(failure)
                    let rest = s.written.flatMap(\.appends) + s.dropQueuedAppends()
                    let writtenDropped = s.written.count
                    s.written = []
                    return (rest, writtenDropped, first ? s.durable : nil)
                }
                logger.critical("store I/O failure; refusing writes until reopened", metadata: .catena([.error: "\(failure)"]))
                if let durable { recordSyncFailure(durableThrough: durable) }
                let own = taken.flatMap(\.appends)
                for p in own { p.ticket.complete(.failure(failure)) }
                for p in rest {
                    p.ticket.complete(.failure(CatenaError(failure.code, "not written because an earlier append failed: \(failure.message)")))
                }
                // A batch the writer is writing right now finds the store failed when it hands
                // the batch over, and is failed by the next round of this loop.
                release(batches: taken.count + writtenDropped)
                continue
            }
            // Durable: make visible, then acknowledge.
            let noted = notedCommit.load(ordering: .relaxed)
            state.withLock { s in
                s.refreshCommitHint(noted: noted)
                for b in taken {
                    guard let si = s.segments.lastIndex(where: { $0.id == b.segment }) else { continue }
                    var offset = b.offset
                    for p in b.appends {
                        for r in p.records {
                            let summary = r.summary(at: Location(segment: b.segment, offset: offset, length: UInt32(r.count)))
                            s.index.apply(summary)
                            if !s.segments[si].sealed { s.activeEntries.append(summary) }
                            s.segments[si].maxTimestamp = max(s.segments[si].maxTimestamp, r.header.timestamp)
                            s.segments[si].lastTimestamp = r.header.timestamp
                            offset += UInt64(r.count)
                        }
                        s.metrics.appendedRecords += p.records.count
                        s.metrics.appendCalls += 1
                    }
                    s.segments[si].size = offset
                    s.segments[si].lastLSN = b.appends[b.appends.count - 1].records.last!.lsn
                    s.segments[si].recordCount += b.appends.reduce(0) { $0 + $1.records.count }
                    s.metrics.appendedBytes += b.bytes
                    s.metrics.batches += 1
                }
                s.durable = taken[taken.count - 1].appends.last!.records.last!.lsn
                s.metrics.syncs += syncs
            }
            let now = ContinuousClock.now
            for b in taken { for p in b.appends { p.ticket.complete(.success(())) } }
            for b in taken {
                instruments.groupCommit.recordNanoseconds((now - b.started).nanosecondsClamped)
                instruments.groupCommitBytes.record(b.bytes)
                instruments.groupCommitRecords.record(b.appends.reduce(0) { $0 + $1.records.count })
            }
            release(batches: taken.count)
        }
    }

    private func release(batches n: Int) {
        unsyncedBatches.add(-n)
    }

    /// The zeros to write after a batch of `batchBytes` that ends at `end`, in a segment whose
    /// file is zero-filled up to `zeroedEnd` (see ``StoreConfiguration/zeroFillAhead``): nil
    /// for a large batch, within the zero-filled stretch, or at the segment's size limit.
    private func zeroFill(after end: UInt64, batchBytes: Int, zeroedEnd: UInt64) -> [UInt8]? {
        let limit = UInt64(configuration.segmentSize)
        guard !zeroBlock.isEmpty, batchBytes < zeroBlock.count / 4, end > zeroedEnd, end < limit else { return nil }
        let n = Int(min(UInt64(zeroBlock.count), limit - end))
        return n == zeroBlock.count ? zeroBlock : Array(zeroBlock.prefix(n))
    }

    /// Cuts the active segment's zero-filled end back to its records (see
    /// ``StoreConfiguration/zeroFillAhead``). Runs on the writer thread with nothing unsynced.
    private func cutZeroFilledEnd() throws(CatenaError) {
        let active: SegmentState? = state.withLock { s in
            guard let last = s.segments.last, !last.sealed, last.zeroedEnd > last.writtenSize else { return nil }
            return last
        }
        guard let active else { return }
        try active.file.truncate(to: active.writtenSize)
        do {
            try active.file.sync()
        } catch {
            state.withLock { s in s.lifecycle = .failed(error) }
            logger.critical("store I/O failure; refusing writes until reopened", metadata: .catena([.error: "\(error)"]))
            throw error
        }
        state.withLock { s in
            if let i = s.segments.lastIndex(where: { $0.id == active.id }) { s.segments[i].zeroedEnd = 0 }
        }
    }

    /// ``cutZeroFilledEnd()`` at close, where a failure only costs the next start-up a scan.
    func cutZeroFilledEndAtClose() {
        do {
            try cutZeroFilledEnd()
        } catch {
            logger.warning("could not cut the zero-filled end of the active segment; the next start-up drops it", metadata: .catena([.error: "\(error)"]))
        }
    }

    /// The active segment to write `bytes` into, sealing and creating segments as needed.
    private func prepareActiveSegment(forBytes bytes: Int, firstLSN: LSN, created: inout Bool) throws(CatenaError) -> (file: any StorageFile, id: UInt64, offset: UInt64, zeroedEnd: UInt64) {
        let current: SegmentState? = state.withLock { s in
            guard let last = s.segments.last, !last.sealed else { return nil }
            return last
        }
        if let current, current.writtenSize == UInt64(current.header.size) || current.writtenSize + UInt64(bytes) <= UInt64(configuration.segmentSize) {
            return (current.file, current.id, current.writtenSize, current.zeroedEnd)
        }
        if current != nil {
            // Sealing writes the hint from the indexed entries: let the syncer finish first.
            waitUntilSynced()
            try seal()
        }
        let id = state.withLock { s in
            defer { s.nextSegmentID += 1 }
            return s.nextSegmentID
        }
        let header = SegmentHeader(id: id, firstLSN: firstLSN, createdAt: configuration.now(), replaces: [])
        let path = dir.segment(id)
        let file = try fs.open(path, mode: .createNew)
        do {
            try file.write(header.encoded(), at: 0)
        } catch {
            file.close()
            try? fs.remove(path)
            throw error
        }
        created = true
        let start = UInt64(header.size)
        let segment = SegmentState(id: id, file: file, header: header, size: start, lastLSN: .zero, recordCount: 0, sealed: false, writtenSize: start)
        state.withLock { s in s.segments.append(segment) }
        logger.debug("segment created", metadata: .catena([.segment: "\(id)", .lsn: "\(firstLSN)"]))
        return (file, id, start, 0)
    }

    /// Seals the active segment: it is never appended to again; its hint file is written.
    private func seal() throws(CatenaError) {
        // Only the last segment may end in zeros (start-up drops them there, and nowhere else).
        try cutZeroFilledEnd()
        let (segment, entries): (SegmentState, [EntrySummary]) = state.withLock { s in
            let i = s.segments.count - 1
            s.segments[i].sealed = true
            s.metrics.segmentsSealed += 1
            defer { s.activeEntries = [] }
            return (s.segments[i], s.activeEntries)
        }
        writeHint(segment: segment.id, size: segment.size, entries: entries)
        logger.debug("segment sealed", metadata: .catena([.segment: "\(segment.id)", .segmentBytes: "\(segment.size)"]))
    }

    func writeHint(segment: UInt64, size: UInt64, entries: [EntrySummary]) {
        HintWriter(fs: fs, dir: dir, logger: logger).write(segment: segment, size: size, entries: entries)
    }

    private func dropEmptySegment(_ id: UInt64) throws(CatenaError) {
        let file: (any StorageFile)? = state.withLock { s in
            guard let i = s.segments.lastIndex(where: { $0.id == id }) else { return nil }
            return s.segments.remove(at: i).file
        }
        file?.close()
        try fs.remove(dir.segment(id))
        try fs.syncDirectory(dir.path)
    }

    /// Fails `batch` and every append queued behind it (their LSNs follow it). `poison`: the
    /// store refuses all writes from now on.
    private func failAppends(_ batch: [PendingAppend], error: CatenaError, poison: Bool) {
        var failed = batch.map(\.ticket)
        state.withLock { s in
            failed += s.dropQueuedAppends().map(\.ticket)
            // Batches already written before this one may still become durable.
            s.tail = s.writtenLSN
            s.retrackUploads(timeout: configuration.abandonedUploadTimeout.nanoseconds)
            if poison { s.lifecycle = .failed(error) }
        }
        if poison {
            logger.critical("store I/O failure; refusing writes until reopened", metadata: .catena([.error: "\(error)"]))
        } else {
            logger.error("append failed", metadata: .catena([.error: "\(error)"]))
        }
        for (i, t) in failed.enumerated() {
            t.complete(.failure(i < batch.count ? error : CatenaError(error.code, "not written because an earlier append failed: \(error.message)")))
        }
    }
}
