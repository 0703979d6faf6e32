import CatenaCore
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A node's durable, log-structured object store: the replication log *is* the data.
///
/// Records are appended to segment files in LSN order and indexed in memory (key -> newest
/// version). The store is a `Sendable` class around one `Mutex`-protected state rather than an
/// actor: blocking file I/O must not run on Swift's cooperative pool (2 threads on a 2-core
/// machine), so a dedicated writer thread performs group commits and a small thread pool
/// performs reads; the lock is held only for in-memory bookkeeping. See docs/ARCHITECTURE.md.
///
/// Appends are enqueued synchronously (``enqueue(_:)``), so a caller that assigns LSNs can
/// enqueue in LSN order without an `await` in between, then awaited (``AppendTicket/durable()``).
public final class Store: Sendable {
    /// The configuration the store was opened with.
    public let configuration: StoreConfiguration
    let fs: any FileSystem
    let dir: DataDirectory
    let logger: Logger
    /// Performs appends, segment rolls and truncations, in order. One thread.
    let writerPool: NIOThreadPool
    /// Syncs written batches and acknowledges them, while the writer writes the next. One thread.
    let syncerPool: NIOThreadPool
    /// Performs compaction and serializes it with truncation. One thread.
    let maintenancePool: NIOThreadPool
    /// The number of batches written but not yet synced and acknowledged.
    let unsyncedBatches = InFlightCounter()
    /// Performs blocking reads.
    let readerPool: NIOThreadPool
    let directoryLock: any FileLock
    let state: Mutex<State>
    /// Serializes writes of the STATE file.
    let stateFileLock = Mutex<Void>(())

    enum Lifecycle {
        case open
        /// A failed fsync leaves the page cache in an unknown state: refuse writes until reopened.
        case failed(CatenaError)
        case closed
    }

    struct PendingAppend {
        var records: [EncodedRecord]
        var bytes: Int
        var ticket: AppendTicket
    }

    struct WrittenBatch {
        var appends: [PendingAppend]
        var bytes: Int
        var file: any StorageFile
        var segment: UInt64
        var offset: UInt64
        var createdSegment: Bool
    }

    enum WriterOp {
        case append(PendingAppend)
        case task(@Sendable () -> Void)
    }

    /// Enqueue-side view of an upload, to refuse a manifest whose chunks were never appended.
    struct UploadProgress {
        var key: Key
        var sizes: [UInt32: UInt64]
    }

    struct SegmentState {
        var id: UInt64
        var file: any StorageFile
        var header: SegmentHeader
        var size: UInt64
        var lastLSN: LSN
        var recordCount: Int
        var sealed: Bool
        /// Where the writer appends next (ahead of `size`, which only counts durable bytes).
        var writtenSize: UInt64

        var info: SegmentInfo {
            SegmentInfo(id: id, firstLSN: header.firstLSN, lastLSN: lastLSN, recordCount: recordCount, byteSize: size, sealed: sealed)
        }
    }

    struct State {
        var lifecycle: Lifecycle = .open
        /// LSN of the last enqueued record.
        var tail: LSN = .zero
        var queue: [WriterOp] = []
        var queueHead = 0
        /// Bytes of the appends in `queue`.
        var queuedBytes = 0
        var writerScheduled = false
        /// Batches written to the page cache, waiting for the syncer.
        var written: [WrittenBatch] = []
        var syncerScheduled = false
        /// LSN of the last record written (durable or not).
        var writtenLSN: LSN = .zero
        var uploadTracker: [UploadID: UploadProgress] = [:]
        /// LSN of the last durable record.
        var durable: LSN = .zero
        var index = StoreIndex()
        var segments: [SegmentState] = []
        var activeEntries: [EntrySummary] = []
        var persistent = PersistentState()
        var damage: [Damage] = []
        var nextSegmentID: UInt64 = 1
        var metrics = StoreMetrics()

        var queueIsEmpty: Bool { queueHead == queue.count }
        mutating func popOp() -> WriterOp {
            let op = queue[queueHead]
            queueHead += 1
            if queueHead > 1024 && queueHead * 2 > queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            return op
        }
    }

    deinit {
        // A store that was never closed still must not leak its threads.
        if case .closed = state.withLock({ $0.lifecycle }) { return }
        writerPool.shutdownGracefully { _ in }
        syncerPool.shutdownGracefully { _ in }
        maintenancePool.shutdownGracefully { _ in }
        readerPool.shutdownGracefully { _ in }
    }

    // MARK: - Opening and closing

    /// Opens (or creates) the store in `configuration.directory`: takes the directory lock,
    /// checks the identity, removes temp files, finishes interrupted compactions, truncates a torn
    /// tail, reports corruption, and rebuilds the index (from hint files where valid).
    public static func open(_ configuration: StoreConfiguration, logger: Logger = Logger(label: "catena.storage")) async throws(CatenaError) -> Store {
        try NodeIdentity.validate(id: configuration.clusterID, what: "cluster id")
        try NodeIdentity.validate(id: configuration.nodeID, what: "node id")
        guard configuration.segmentSize >= 4096, configuration.maxValueSize >= 1, configuration.readThreads >= 1,
              configuration.groupCommitMaxBytes >= 1 else {
            throw CatenaError(.invalidArgument, "segment size must be >= 4096 bytes; value size, read threads and group commit size >= 1")
        }
        let opener = NIOThreadPool(numberOfThreads: 1)
        opener.start()
        defer { opener.shutdownGracefully { _ in } }
        do {
            return try await opener.runIfActive { () throws -> Store in
                try Store(opening: configuration, logger: logger)
            }
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.ioFailure, "opening \(configuration.directory): \(error)")
        }
    }

    private init(opening configuration: StoreConfiguration, logger: Logger) throws(CatenaError) {
        var logger = logger
        logger[metadataKey: LogKey.directory] = "\(configuration.directory)"
        self.configuration = configuration
        self.fs = configuration.fileSystem
        self.dir = DataDirectory(path: configuration.directory)
        self.logger = logger

        if !fs.fileExists(dir.path) {
            try fs.createDirectory(dir.path)
        }
        let names: [String]
        do {
            names = try fs.contentsOfDirectory(dir.path)
        } catch {
            throw CatenaError(error.code == .permissionDenied ? .permissionDenied : .directoryUnreadable,
                              "cannot read data directory: \(error.message)")
        }
        self.directoryLock = try fs.lock(dir.lock)
        var recovered: Recovered
        do {
            try Store.checkIdentity(fs: fs, dir: dir, names: names, configuration: configuration)
            recovered = try Recovery(fs: fs, dir: dir, logger: logger).open(names: names)
        } catch {
            directoryLock.release()
            throw error
        }
        var s = State()
        s.segments = recovered.segments
        s.index = recovered.index
        s.activeEntries = recovered.activeEntries
        s.damage = recovered.damage
        s.persistent = recovered.persistent
        s.durable = recovered.highest
        s.writtenLSN = recovered.highest
        s.tail = recovered.highest
        s.nextSegmentID = recovered.nextSegmentID
        s.metrics.tornBytesDropped = recovered.tornBytesDropped
        s.uploadTracker = Store.tracker(from: recovered.index)
        self.state = Mutex(s)

        writerPool = NIOThreadPool(numberOfThreads: 1)
        syncerPool = NIOThreadPool(numberOfThreads: 1)
        maintenancePool = NIOThreadPool(numberOfThreads: 1)
        readerPool = NIOThreadPool(numberOfThreads: configuration.readThreads)
        writerPool.start()
        syncerPool.start()
        maintenancePool.start()
        readerPool.start()
        logger.info("store open", metadata: [
            LogKey.lsn: "\(recovered.highest)", "segments": "\(recovered.segments.count)",
            "keys": "\(recovered.index.objects.count)", "damage": "\(recovered.damage.count)",
        ])
    }

    private static func checkIdentity(fs: any FileSystem, dir: DataDirectory, names: [String], configuration: StoreConfiguration) throws(CatenaError) {
        let expected = NodeIdentity(clusterID: configuration.clusterID, nodeID: configuration.nodeID)
        if names.contains("IDENTITY") {
            let file = try fs.open(dir.identity, mode: .read)
            defer { file.close() }
            let found = try NodeIdentity.decode(try file.read(at: 0, count: 4096), path: dir.identity)
            guard found.formatVersion == DataDirectory.formatVersion else {
                throw CatenaError(.unsupportedVersion, "\(dir.path) has on-disk format \(found.formatVersion); this build reads \(DataDirectory.formatVersion)")
            }
            guard found.clusterID == expected.clusterID, found.nodeID == expected.nodeID else {
                throw CatenaError(.identityMismatch, "\(dir.path) belongs to cluster '\(found.clusterID)' node '\(found.nodeID)', not cluster '\(expected.clusterID)' node '\(expected.nodeID)'")
            }
            return
        }
        if names.contains(where: { $0.hasSuffix(".seg") }) {
            throw CatenaError(.directoryUnreadable, "\(dir.path) has segments but no IDENTITY file; refusing to guess whose data it is")
        }
        try writeAtomically(fs: fs, dir: dir, path: dir.identity, bytes: expected.encoded())
    }

    /// Write to a temp file, fsync it, rename over `path`, fsync the directory.
    static func writeAtomically(fs: any FileSystem, dir: DataDirectory, path: String, bytes: [UInt8]) throws(CatenaError) {
        let tmp = path + ".tmp"
        try fs.remove(tmp)
        let file = try fs.open(tmp, mode: .createNew)
        defer { file.close() }
        try file.write(bytes, at: 0)
        try file.sync()
        try fs.rename(tmp, to: path)
        try fs.syncDirectory(dir.path)
    }

    static func tracker(from index: StoreIndex) -> [UploadID: UploadProgress] {
        index.uploads.mapValues { UploadProgress(key: $0.key, sizes: $0.chunkSizes) }
    }

    /// Waits for enqueued appends, then closes files, threads and the directory lock.
    public func close() async {
        let alreadyClosed: Bool = state.withLock { s in
            if case .closed = s.lifecycle { return true }
            return false
        }
        if alreadyClosed { return }
        let drained = AppendTicket()
        submit(.task { drained.complete(.success(())) }, force: true)
        try? await drained.durable()
        let files: [any StorageFile] = state.withLock { s in
            s.lifecycle = .closed
            return s.segments.map(\.file)
        }
        try? await maintenancePool.shutdownGracefully()
        try? await writerPool.shutdownGracefully()
        try? await syncerPool.shutdownGracefully()
        try? await readerPool.shutdownGracefully()
        for f in files { f.close() }
        directoryLock.release()
        logger.info("store closed")
    }

    // MARK: - Appending

    /// Enqueues records for appending, in order, and returns a ticket to await durability.
    ///
    /// Checks synchronously — so nothing is enqueued if it fails — that the store is writable,
    /// each value fits ``StoreConfiguration/maxValueSize``, the first record's LSN directly
    /// follows the last enqueued one (seq + 1, epoch not lower; any seq on an empty log) and the
    /// rest follow each other, and every manifest's chunks were appended. A failed append leaves
    /// nothing visible.
    public func enqueue(_ records: [EncodedRecord]) throws(CatenaError) -> AppendTicket {
        guard !records.isEmpty else { throw CatenaError(.invalidArgument, "append needs at least one record") }
        var bytes = 0
        for r in records {
            if r.header.valueLength > configuration.maxValueSize && r.type != .manifest {
                throw CatenaError(.valueTooLarge, "value of \(r.header.valueLength) bytes for key '\(r.key)' exceeds the \(configuration.maxValueSize)-byte record limit; store it chunked")
            }
            bytes += r.count
        }
        let ticket = AppendTicket()
        let schedule: Bool = try state.withLock { (s) throws(CatenaError) -> Bool in
            switch s.lifecycle {
            case .open: break
            case .failed(let error): throw CatenaError(.ioFailure, "store refuses writes after an I/O failure (\(error.message)); reopen it")
            case .closed: throw CatenaError(.closed, "store is closed")
            }
            var previous = s.tail
            var tracker = s.uploadTracker
            for r in records {
                let lsn = r.lsn
                let follows = previous == .zero ? lsn.seq >= 1 : (lsn.seq == previous.seq + 1 && lsn.epoch >= previous.epoch)
                guard follows else {
                    throw CatenaError(.lsnOutOfOrder, "record \(lsn) does not follow the log's end \(previous)")
                }
                previous = lsn
                try Store.track(r, in: &tracker)
            }
            s.tail = previous
            s.uploadTracker = tracker
            s.queue.append(.append(PendingAppend(records: records, bytes: bytes, ticket: ticket)))
            s.queuedBytes += bytes
            if s.writerScheduled { return false }
            s.writerScheduled = true
            return true
        }
        if schedule { writerPool.submit { [self] _ in drain() } }
        return ticket
    }

    /// Appends records and returns once they are durable. See ``enqueue(_:)``.
    public func append(_ records: [EncodedRecord]) async throws(CatenaError) {
        try await enqueue(records).durable()
    }

    /// Appends one record and returns once it is durable.
    public func append(_ record: Record) async throws(CatenaError) {
        try await enqueue([try record.encoded()]).durable()
    }

    private static func track(_ r: EncodedRecord, in tracker: inout [UploadID: UploadProgress]) throws(CatenaError) {
        switch r.type {
        case .chunk:
            guard let address = RecordExtension.chunkAddress(in: r.extensions) else { return }
            var progress = tracker[address.upload] ?? UploadProgress(key: r.key, sizes: [:])
            guard progress.key == r.key else {
                throw CatenaError(.invalidArgument, "chunk \(address.index) of upload \(address.upload) names key '\(r.key)', but the upload is for '\(progress.key)'")
            }
            guard progress.sizes[address.index] == nil else {
                throw CatenaError(.invalidArgument, "chunk \(address.index) of upload \(address.upload) was already appended")
            }
            progress.sizes[address.index] = UInt64(r.header.valueLength)
            tracker[address.upload] = progress
        case .manifest:
            let manifest = try Manifest(decoding: r.value)
            guard let progress = tracker[manifest.upload], progress.key == r.key else {
                throw CatenaError(.incompleteUpload, "manifest for '\(r.key)' names upload \(manifest.upload), which has no chunks for that key")
            }
            let missing = (0..<manifest.chunkCount).filter { progress.sizes[$0] == nil }
            guard missing.isEmpty else {
                throw CatenaError(.incompleteUpload, "manifest for '\(r.key)' needs \(manifest.chunkCount) chunks; \(missing.count) missing (first: \(missing[0]))")
            }
            let total = (0..<manifest.chunkCount).reduce(UInt64(0)) { $0 + progress.sizes[$1]! }
            guard total == manifest.totalSize, progress.sizes.count == Int(manifest.chunkCount) else {
                throw CatenaError(.incompleteUpload, "manifest for '\(r.key)' says \(manifest.chunkCount) chunks / \(manifest.totalSize) bytes; upload has \(progress.sizes.count) chunks / \(total) bytes")
            }
            tracker[manifest.upload] = nil
        default:
            break
        }
    }

    /// Queues a writer task. `force` queues even on a closed or failed store (for close()).
    func submit(_ op: WriterOp, force: Bool = false) {
        let schedule: Bool = state.withLock { s in
            s.queue.append(op)
            if s.writerScheduled { return false }
            s.writerScheduled = true
            return true
        }
        if schedule { writerPool.submit { [self] _ in drain() } }
    }

    /// The writer loop: runs on `writerPool`'s one thread until the queue is empty.
    ///
    /// Writing and syncing are pipelined: the writer copies batch N+1 into the page cache while
    /// the syncer thread fsyncs batch N, so the device never idles while the CPU copies.
    private func drain() {
        let delayNanos = configuration.groupCommitDelay.nanoseconds
        let maxBytes = configuration.groupCommitMaxBytes
        let oneCallPerSync = configuration.durability == .always
        while true {
            // While a sync is in flight, write a new batch only once it is worth a syscall of its
            // own (pipelining large values); small records wait and share the next fsync.
            if state.withLock({ $0.queuedBytes }) < Store.pipelineMinBytes {
                unsyncedBatches.waitForZero()
            }
            enum Work { case appends([PendingAppend], Int), task(@Sendable () -> Void) }
            func take(_ s: inout State, into batch: inout [PendingAppend], bytes: inout Int) {
                while !s.queueIsEmpty, case .append(let p) = s.queue[s.queueHead] {
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
                if case .task(let t) = s.queue[s.queueHead] {
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
                if delayNanos > 0 && !oneCallPerSync && bytes < maxBytes {
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

        // Roll the active segment when the batch does not fit (a batch is never split).
        let active: (file: any StorageFile, id: UInt64, offset: UInt64)
        do {
            active = try prepareActiveSegment(forBytes: bytes, firstLSN: firstLSN, created: &created)
        } catch {
            failAppends(batch, error: error, poison: false)
            return
        }
        do {
            try active.file.write(chunks, at: active.offset)
        } catch {
            // Undo the partial write so nothing of it is ever read back, then fail this batch and
            // everything queued behind it (their LSNs follow this batch's).
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
        let schedule: Bool = state.withLock { s in
            if let i = s.segments.lastIndex(where: { $0.id == active.id }) {
                s.segments[i].writtenSize = active.offset + UInt64(bytes)
            }
            s.writtenLSN = batch[batch.count - 1].records.last!.lsn
            s.written.append(WrittenBatch(appends: batch, bytes: bytes, file: active.file, segment: active.id, offset: active.offset, createdSegment: created))
            if s.syncerScheduled { return false }
            s.syncerScheduled = true
            return true
        }
        if schedule { syncerPool.submit { [self] _ in syncLoop() } }
    }

    /// The syncer loop: fsyncs everything written so far (one fsync per file for any number of
    /// batches), then indexes and acknowledges in order.
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
                        try b.file.sync()
                        synced.append(ObjectIdentifier(b.file))
                        syncs += 1
                    }
                    if taken.contains(where: \.createdSegment) {
                        try fs.syncDirectory(dir.path)
                        syncs += 1
                    }
                } catch {
                    failure = error
                }
            }
            if let failure {
                // What reached the disk is unknown: refuse all writes until reopened.
                let (rest, writtenDropped): ([PendingAppend], Int) = state.withLock { s in
                    s.lifecycle = .failed(failure)
                    var rest = s.written.flatMap(\.appends)
                    let writtenDropped = s.written.count
                    s.written = []
                    var kept: [WriterOp] = []
                    while !s.queueIsEmpty {
                        let op = s.popOp()
                        switch op {
                        case .append(let p): rest.append(p)
                        case .task: kept.append(op)
                        }
                    }
                    s.queue = kept
                    s.queueHead = 0
                    s.queuedBytes = 0
                    return (rest, writtenDropped)
                }
                logger.critical("store I/O failure; refusing writes until reopened", metadata: ["error": "\(failure)"])
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
            state.withLock { s in
                for b in taken {
                    guard let si = s.segments.lastIndex(where: { $0.id == b.segment }) else { continue }
                    var offset = b.offset
                    for p in b.appends {
                        for r in p.records {
                            let summary = r.summary(at: Location(segment: b.segment, offset: offset, length: UInt32(r.count)))
                            s.index.apply(summary)
                            if !s.segments[si].sealed { s.activeEntries.append(summary) }
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
            for b in taken { for p in b.appends { p.ticket.complete(.success(())) } }
            release(batches: taken.count)
        }
    }

    private func release(batches n: Int) {
        unsyncedBatches.add(-n)
    }

    /// The active segment to write `bytes` into, sealing and creating segments as needed.
    private func prepareActiveSegment(forBytes bytes: Int, firstLSN: LSN, created: inout Bool) throws(CatenaError) -> (file: any StorageFile, id: UInt64, offset: UInt64) {
        let current: SegmentState? = state.withLock { s in
            guard let last = s.segments.last, !last.sealed else { return nil }
            return last
        }
        if let current, current.writtenSize == UInt64(current.header.size) || current.writtenSize + UInt64(bytes) <= UInt64(configuration.segmentSize) {
            return (current.file, current.id, current.writtenSize)
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
        logger.debug("segment created", metadata: ["segment": "\(id)", LogKey.lsn: "\(firstLSN)"])
        return (file, id, start)
    }

    /// Seals the active segment: it is never appended to again; its hint file is written.
    private func seal() throws(CatenaError) {
        let (segment, entries): (SegmentState, [EntrySummary]) = state.withLock { s in
            let i = s.segments.count - 1
            s.segments[i].sealed = true
            s.metrics.segmentsSealed += 1
            defer { s.activeEntries = [] }
            return (s.segments[i], s.activeEntries)
        }
        writeHint(segment: segment.id, size: segment.size, entries: entries)
        logger.debug("segment sealed", metadata: ["segment": "\(segment.id)", "bytes": "\(segment.size)"])
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
            // Appends behind the failed batch fail too; tasks (close barriers, truncations) still run.
            var kept: [WriterOp] = []
            while !s.queueIsEmpty {
                let op = s.popOp()
                switch op {
                case .append(let p): failed.append(p.ticket)
                case .task: kept.append(op)
                }
            }
            s.queue = kept
            s.queueHead = 0
            s.queuedBytes = 0
            // Batches already written before this one may still become durable.
            s.tail = s.writtenLSN
            s.uploadTracker = Store.tracker(from: s.index)
            for b in s.written { for p in b.appends { for r in p.records { try? Store.track(r, in: &s.uploadTracker) } } }
            if poison { s.lifecycle = .failed(error) }
        }
        if poison {
            logger.critical("store I/O failure; refusing writes until reopened", metadata: ["error": "\(error)"])
        } else {
            logger.error("append failed", metadata: ["error": "\(error)"])
        }
        for (i, t) in failed.enumerated() {
            t.complete(.failure(i < batch.count ? error : CatenaError(error.code, "not written because an earlier append failed: \(error.message)")))
        }
    }

    // MARK: - Reading

    /// The highest durable LSN (`.zero` for an empty log).
    public var highestLSN: LSN { state.withLock { $0.durable } }

    /// Counters since open.
    public var metrics: StoreMetrics { state.withLock { $0.metrics } }

    /// Damage found at open (or later) that the store refuses to serve.
    public var damage: [DamageReport] {
        state.withLock { s in
            s.damage.map { DamageReport(path: $0.path, offset: $0.offset, length: $0.length, lsn: $0.header?.lsn, key: $0.key, lostSeqs: $0.lost) }
        }
    }

    /// The newest version's metadata, or nil if the key does not exist or was deleted.
    public func head(_ key: Key) throws(CatenaError) -> ObjectInfo? {
        try state.withLock { (s) throws(CatenaError) -> ObjectInfo? in
            try Store.refuseIfPossiblyStale(key, s.index.objects[key], s)
            guard let v = s.index.objects[key] else { return nil }
            if v.damaged {
                throw CatenaError(.corruption, "the newest version of '\(key)' (record \(v.lsn), segment \(v.location.segment) offset \(v.location.offset)) is damaged on disk")
            }
            guard v.type != .delete else { return nil }
            return Store.info(key, v)
        }
    }

    /// Damage whose records' keys are unknown may have overwritten any key whose newest version
    /// is older than it, or created any key: refuse those reads rather than serve stale data.
    static func refuseIfPossiblyStale(_ key: Key, _ version: ObjectVersion?, _ s: State) throws(CatenaError) {
        for d in s.damage {
            guard let lost = d.lost else { continue }
            if version.map({ $0.lsn.seq < lost.upperBound }) ?? true {
                throw CatenaError(.corruption, "'\(key)' may have been written by records \(lost.lowerBound)...\(lost.upperBound), which are unreadable (\(d)); this replica needs a re-copy")
            }
        }
    }

    static func info(_ key: Key, _ v: ObjectVersion) -> ObjectInfo {
        let exts = (try? EncodedRecord.parseExtensions(v.extensions[...])) ?? []
        var metadata: [String: String] = [:]
        for (name, value) in RecordExtension.userMetadata(in: exts) { metadata[name] = value }
        return ObjectInfo(
            key: key, lsn: v.lsn, size: v.size, contentChecksum: v.contentChecksum,
            contentType: exts.first { $0.tag == RecordExtension.contentTypeTag }.map { String(decoding: $0.value, as: UTF8.self) },
            userMetadata: metadata, timestamp: v.timestamp, requestID: v.requestID, chunkCount: v.chunks.count)
    }

    /// The newest version of `key` with a streaming body, or nil if it does not exist.
    ///
    /// The body verifies every record checksum and, at its end, the content checksum; a
    /// mismatch is thrown from the body's iterator (for values up to 4 MiB before any byte is
    /// returned). The body keeps reading the version that was newest when `get` was called,
    /// even if it is overwritten or compacted meanwhile.
    public func get(_ key: Key) throws(CatenaError) -> StoredObject? {
        try state.withLock { (s) throws(CatenaError) -> StoredObject? in
            try Store.refuseIfPossiblyStale(key, s.index.objects[key], s)
            guard let v = s.index.objects[key] else { return nil }
            if v.damaged {
                throw CatenaError(.corruption, "the newest version of '\(key)' (record \(v.lsn), segment \(v.location.segment) offset \(v.location.offset)) is damaged on disk")
            }
            guard v.type != .delete else { return nil }
            let locations = v.type == .manifest ? v.chunks : [v.location]
            var parts: [ObjectBody.Part] = []
            for loc in locations {
                guard let seg = s.segments.first(where: { $0.id == loc.segment }) else {
                    throw CatenaError(.corruption, "segment \(loc.segment) of '\(key)' is missing")
                }
                parts.append(ObjectBody.Part(file: seg.file, location: loc))
            }
            return StoredObject(info: Store.info(key, v), body: ObjectBody(parts: parts, contentChecksum: v.contentChecksum, size: v.size, pool: readerPool))
        }
    }

    /// Live keys starting with `prefix`, in byte order, strictly after `after`; at most `limit`.
    public func list(prefix: [UInt8] = [], after: Key? = nil, limit: Int = 1000) throws(CatenaError) -> ListPage {
        guard limit >= 1 else { throw CatenaError(.invalidArgument, "list limit must be at least 1") }
        return try state.withLock { (s) throws(CatenaError) -> ListPage in
            if let d = s.damage.first(where: { $0.lost != nil }) {
                throw CatenaError(.corruption, "listing refused: records \(d.lost!.lowerBound)...\(d.lost!.upperBound) are unreadable (\(d)); this replica needs a re-copy")
            }
            let (keys, more) = s.index.list(prefix: prefix, after: after, limit: limit)
            let infos = keys.map { Store.info($0, s.index.objects[$0]!) }
            return ListPage(objects: infos, nextCursor: more ? keys.last : nil)
        }
    }

    /// The log's segments in order, sealed ones first; the last may be the active one.
    public var segments: [SegmentInfo] { state.withLock { $0.segments.map(\.info) } }

    /// The sealed segments, in log order.
    public var sealedSegments: [SegmentInfo] { segments.filter(\.sealed) }

    /// Every record with an LSN after `lsn`, in log order, up to the durable end at the time of
    /// the call. Throws ``CatenaError/Code/historyCompacted`` if compaction dropped records after
    /// `lsn` (ask from `.zero` for a full copy), and ``CatenaError/Code/corruption`` from the
    /// stream when it meets damaged bytes.
    public func records(after lsn: LSN) throws(CatenaError) -> RecordStream {
        try state.withLock { (s) throws(CatenaError) -> RecordStream in
            if lsn != .zero && lsn.seq < s.persistent.compactedThrough.seq {
                throw CatenaError(.historyCompacted, "records after \(lsn) were compacted (history kept from \(s.persistent.compactedThrough)); a full copy is needed")
            }
            let parts = s.segments.filter { $0.lastLSN.seq > lsn.seq }.map {
                RecordStream.Part(file: $0.file, segment: $0.id, start: UInt64($0.header.size), end: $0.size)
            }
            return RecordStream(parts: parts, after: lsn, pool: readerPool)
        }
    }

    /// The records of one sealed segment.
    public func records(inSegment id: UInt64) throws(CatenaError) -> RecordStream {
        try state.withLock { (s) throws(CatenaError) -> RecordStream in
            guard let seg = s.segments.first(where: { $0.id == id }), seg.sealed else {
                throw CatenaError(.invalidArgument, "no sealed segment \(id)")
            }
            return RecordStream(parts: [.init(file: seg.file, segment: seg.id, start: UInt64(seg.header.size), end: seg.size)], after: .zero, pool: readerPool)
        }
    }

    // MARK: - Watermark, truncation

    /// The commit watermark: the highest LSN known to be on every replica (persisted).
    public var commitWatermark: LSN { state.withLock { $0.persistent.commitWatermark } }

    /// The highest LSN whose history compaction has dropped; asking for records after an LSN
    /// below it needs a full copy.
    public var compactedThrough: LSN { state.withLock { $0.persistent.compactedThrough } }

    /// Raises and persists the commit watermark. It never goes down, and never above the
    /// highest durable LSN.
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
                    var p = s.persistent
                    p.commitWatermark = lsn
                    return p
                }
                try Store.writeAtomically(fs: fs, dir: dir, path: dir.state, bytes: next.encoded())
                state.withLock { s in s.persistent.commitWatermark = max(s.persistent.commitWatermark, lsn) }
            }
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

    /// Removes every record after `lsn` (records an old head wrote that the chain never
    /// committed). Deletes later segments newest first and rewrites the one it cuts
    /// (crash-safe), then rebuilds the index. Refused at or below the commit watermark.
    /// Returns how many records were removed.
    @discardableResult
    public func truncate(after lsn: LSN) async throws(CatenaError) -> Int {
        try await runBlocking(on: maintenancePool) { [self] () throws(CatenaError) -> Int in
            try state.withLock { (s) throws(CatenaError) in
                if case .closed = s.lifecycle { throw CatenaError(.closed, "store is closed") }
                guard lsn >= s.persistent.commitWatermark else {
                    throw CatenaError(.belowCommitWatermark, "cannot truncate after \(lsn): the commit watermark is \(s.persistent.commitWatermark)")
                }
                if lsn.seq < s.tail.seq { s.tail = lsn }
            }
            let done = ConditionLock(value: false)
            let outcome = NIOLockedValueBox<Result<Int, CatenaError>>(.success(0))
            submit(.task { [self] in
                outcome.withLockedValue { $0 = Result { () throws(CatenaError) in try performTruncate(after: lsn) } }
                done.lock(); done.unlock(withValue: true)
            })
            done.lock(whenValue: true); done.unlock()
            return try outcome.withLockedValue { $0 }.get()
        }
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
            logger.info("truncate: removed segment", metadata: ["segment": "\(seg.id)"])
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
        let recovered = try Recovery(fs: fs, dir: dir, logger: logger).open(names: names, atStartUp: false)
        // Old handles are not closed: readers may still hold them; they close when released.
        state.withLock { s in
            s.segments = recovered.segments
            s.index = recovered.index
            s.activeEntries = recovered.activeEntries
            s.damage = recovered.damage
            s.durable = recovered.highest
            s.writtenLSN = recovered.highest
            s.tail = recovered.highest
            s.nextSegmentID = max(s.nextSegmentID, recovered.nextSegmentID)
            s.uploadTracker = Store.tracker(from: recovered.index)
        }
        let after = recovered.segments.reduce(0) { $0 + $1.recordCount }
        let removed = max(0, before - after)
        logger.info("truncated log", metadata: [LogKey.lsn: "\(lsn)", "records_removed": "\(removed)"])
        return removed
    }
}

/// Runs a blocking, typed-throwing closure on `pool`.
func runBlocking<T: Sendable>(on pool: NIOThreadPool, _ body: @escaping @Sendable () throws(CatenaError) -> T) async throws(CatenaError) -> T {
    do {
        return try await pool.runIfActive { try body() }
    } catch let error as CatenaError {
        throw error
    } catch {
        throw CatenaError(.closed, "store thread pool is shut down: \(error)")
    }
}

/// Logger metadata keys, in one place.
public enum LogKey {
    /// The data directory.
    public static let directory = "catena_dir"
    /// An LSN.
    public static let lsn = "catena_lsn"
    /// A node id.
    public static let node = "catena_node"
    /// A configuration epoch.
    public static let epoch = "catena_epoch"
}
