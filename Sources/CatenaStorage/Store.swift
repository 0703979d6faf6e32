import CatenaCore
import CoreMetrics
import DequeModule
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
    let instruments: Instruments
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
    /// ``StoreConfiguration/zeroFillAhead`` zero bytes, written after small batches.
    let zeroBlock: [UInt8]
    let directoryLock: any FileLock
    let state: Mutex<State>
    /// Serializes writes of the STATE file.
    let stateFileLock = Mutex<Void>(())
    /// Held for the whole of a compaction or a truncation, so they never overlap.
    let maintenanceLock = Mutex<Void>(())
    /// The seq through which the node last said the chain has committed
    /// (``noteCommitted(through:)``): set on the replication hot path without the lock, read
    /// when records are indexed.
    let notedCommit = Atomic<UInt64>(0)

    enum Lifecycle {
        case open
        /// A failed fsync leaves the page cache in an unknown state: refuse writes until reopened.
        case failed(CatenaError)
        case closed

        var isOpen: Bool {
            if case .open = self { return true }
            return false
        }
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
        /// When the writer began writing it (for the group commit's duration).
        var started: ContinuousClock.Instant
    }

    /// What the store records through swift-metrics (``StoreConfiguration/metrics``).
    struct Instruments: Sendable {
        let fsync: CoreMetrics.Timer
        let groupCommit: CoreMetrics.Timer
        let groupCommitBytes: Recorder
        let groupCommitRecords: Recorder

        init(_ factory: any MetricsFactory) {
            fsync = CoreMetrics.Timer(label: CatenaMetric.fsyncDuration.name, factory: factory)
            groupCommit = CoreMetrics.Timer(label: CatenaMetric.groupCommitDuration.name, factory: factory)
            groupCommitBytes = Recorder(label: CatenaMetric.groupCommitBytes.name, factory: factory)
            groupCommitRecords = Recorder(label: CatenaMetric.groupCommitRecords.name, factory: factory)
        }
    }

    enum WriterOp {
        case append(PendingAppend)
        case task(@Sendable () -> Void)
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
        /// The file's length when the writer has zero-filled it beyond `writtenSize`, else 0.
        var zeroedEnd: UInt64 = 0
        /// The newest head timestamp of its records (damaged ones with an intact header too):
        /// a segment whose newest record is outside the request-id window has none inside it.
        var maxTimestamp: UInt64 = 0
        /// The head timestamp of its last record (the log's last record anchors the window).
        var lastTimestamp: UInt64 = 0

        var info: SegmentInfo {
            SegmentInfo(id: id, firstLSN: header.firstLSN, lastLSN: lastLSN, recordCount: recordCount, byteSize: size, sealed: sealed)
        }
    }

    struct State {
        var lifecycle: Lifecycle = .open
        /// LSN of the last enqueued record.
        var tail: LSN = .zero
        /// Ops for the writer, in order; a taken op leaves the queue at once, so a 1 MiB append
        /// is not kept alive by the queue after it was written.
        var queue = Deque<WriterOp>()
        /// Bytes of the appends in `queue`.
        var queuedBytes = 0
        var writerScheduled = false
        /// Batches written to the page cache, waiting for the syncer.
        var written: [WrittenBatch] = []
        var syncerScheduled = false
        /// LSN of the last record written (durable or not).
        var writtenLSN: LSN = .zero
        var uploadTracker = UploadTracker()
        /// LSN of the last durable record.
        var durable: LSN = .zero
        var index = StoreIndex()
        var segments: [SegmentState] = []
        var activeEntries: [EntrySummary] = []
        var persistent = PersistentState()
        var damage: [Damage] = []
        var nextSegmentID: UInt64 = 1
        var metrics = StoreMetrics()
        /// Seqs of truncations queued but not yet done (the watermark may not pass them).
        var pendingTruncations: [UInt64] = []

        /// Rebuilds the enqueue-side upload view: the index's, then the records written or
        /// queued but not yet durable, in order.
        mutating func retrackUploads(timeout: UInt64) {
            uploadTracker = UploadTracker(from: index)
            for b in written { for p in b.appends { for r in p.records { try? uploadTracker.track(r, timeout: timeout, strict: false) } } }
            for op in queue {
                if case .append(let p) = op { for r in p.records { try? uploadTracker.track(r, timeout: timeout, strict: false) } }
            }
        }

        /// Takes the log as recovery loaded it from disk (at start-up, and after a truncation).
        /// The enqueue tail and the persisted state are the caller's to set.
        mutating func adopt(_ recovered: Recovered) {
            segments = recovered.segments
            index = recovered.index
            activeEntries = recovered.activeEntries
            damage = recovered.damage
            durable = recovered.highest
            writtenLSN = recovered.highest
            nextSegmentID = max(nextSegmentID, recovered.nextSegmentID)
            uploadTracker = UploadTracker(from: recovered.index)
        }

        var queueIsEmpty: Bool { queue.isEmpty }

        /// Points the index's commit hint at the higher of the node's `noted` commit seq and
        /// the persisted watermark's (always committed), and forgets the older versions it
        /// passed.
        mutating func refreshCommitHint(noted: UInt64) {
            index.commitHint = max(noted, persistent.commitWatermark.seq)
            index.trimOlderVersions()
        }

        /// The request-id window of `width` nanoseconds, anchored at the log's last durable
        /// record (see ``RequestWindow``).
        func requestWindow(width: UInt64) -> RequestWindow {
            RequestWindow(anchor: logTime, width: width)
        }

        /// The log's time: the head timestamp of its last durable record (0 for an empty log).
        var logTime: UInt64 { segments.last(where: { $0.recordCount > 0 })?.lastTimestamp ?? 0 }

        /// Queues `op` for the writer; true if the caller must start the writer thread.
        mutating func enqueueOp(_ op: WriterOp) -> Bool {
            queue.append(op)
            if case .append(let p) = op { queuedBytes += p.bytes }
            if writerScheduled { return false }
            writerScheduled = true
            return true
        }

        /// Removes every queued append (they fail with the batch before them); tasks (close
        /// barriers, truncations) stay queued and still run.
        mutating func dropQueuedAppends() -> [PendingAppend] {
            var dropped: [PendingAppend] = []
            var kept = Deque<WriterOp>()
            while let op = queue.popFirst() {
                switch op {
                case .append(let p): dropped.append(p)
                case .task: kept.append(op)
                }
            }
            queue = kept
            queuedBytes = 0
            return dropped
        }
        mutating func popOp() -> WriterOp { queue.removeFirst() }
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
              configuration.groupCommitMaxBytes >= 1, configuration.listStepEntries >= 1 else {
            throw CatenaError(.invalidArgument, "segment size must be >= 4096 bytes; value size, read threads, group commit size and list step >= 1")
        }
        let opener = NIOThreadPool(numberOfThreads: 1)
        opener.start()
        defer { opener.shutdownGracefully { _ in } }
        let store: Store
        do {
            store = try await opener.runIfActive { () throws -> Store in
                try Store(opening: configuration, logger: logger)
            }
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.ioFailure, "opening \(configuration.directory): \(error)")
        }
        do {
            try await store.distrustWritesAfterSyncFailure()
        } catch {
            await store.close()
            throw error
        }
        return store
    }

    private init(opening configuration: StoreConfiguration, logger: Logger) throws(CatenaError) {
        var logger = logger
        logger[metadataKey: LogKey.directory.rawValue] = "\(configuration.directory)"
        self.configuration = configuration
        self.instruments = Instruments(configuration.metrics)
        self.fs = configuration.fileSystem
        self.dir = DataDirectory(path: configuration.directory)
        self.logger = logger
        self.zeroBlock = [UInt8](repeating: 0, count: max(0, configuration.zeroFillAhead))

        if !fs.fileExists(dir.path) {
            try fs.createDirectory(dir.path)
            // Make the new directory's own entry durable too.
            let parent = dir.path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            try fs.syncDirectory(parent.isEmpty ? (dir.path.hasPrefix("/") ? "/" : ".") : parent)
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
            // What recovery found may be only in the page cache (a process killed between a
            // write and its fsync): make it durable before calling it durable — a replica
            // forwards and acknowledges what its store reports durable.
            for segment in recovered.segments where !segment.sealed { try segment.file.sync() }
            try fs.syncDirectory(dir.path)
        } catch {
            directoryLock.release()
            throw error
        }
        var s = State()
        s.adopt(recovered)
        s.persistent = recovered.persistent
        s.tail = recovered.highest
        s.metrics.tornBytesDropped = recovered.tornBytesDropped
        self.state = Mutex(s)

        writerPool = NIOThreadPool(numberOfThreads: 1)
        syncerPool = NIOThreadPool(numberOfThreads: 1)
        maintenancePool = NIOThreadPool(numberOfThreads: 1)
        readerPool = NIOThreadPool(numberOfThreads: configuration.readThreads)
        writerPool.start()
        syncerPool.start()
        maintenancePool.start()
        readerPool.start()
        logger.info("store open", metadata: .catena([
            .lsn: "\(recovered.highest)", .segments: "\(recovered.segments.count)",
            .keys: "\(recovered.index.objects.count)", .damageCount: "\(recovered.damage.count)",
        ]))
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

    /// Throws unless the store takes writes.
    static func checkWritable(_ s: State) throws(CatenaError) {
        switch s.lifecycle {
        case .open: return
        case .failed(let error): throw CatenaError(.ioFailure, "store refuses writes after an I/O failure (\(error.message)); reopen it")
        case .closed: throw CatenaError(.closed, "store is closed")
        }
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


    /// Waits for enqueued appends, then closes files, threads and the directory lock.
    public func close() async {
        let alreadyClosed: Bool = state.withLock { s in
            if case .closed = s.lifecycle { return true }
            return false
        }
        if alreadyClosed { return }
        let drained = AppendTicket()
        submit(.task { [self] in
            cutZeroFilledEndAtClose()
            drained.complete(.success(()))
        })
        try? await drained.durable()
        state.withLock { s in s.lifecycle = .closed }
        try? await maintenancePool.shutdownGracefully()
        try? await writerPool.shutdownGracefully()
        try? await syncerPool.shutdownGracefully()
        try? await readerPool.shutdownGracefully()
        // Segment files are not closed here: a reader may still be streaming from one; each
        // closes when its last reference goes.
        directoryLock.release()
        logger.info("store closed")
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
