import CatenaCatchUpWire
import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import Logging
import NIOCore
import Synchronization

/// How far a ``CatchUpReceiver`` has come: what it installed, what crossed the wire, and how far
/// the source's log reaches.
public struct CatchUpProgress: Hashable, Sendable {
    /// The receiver's last durable record.
    public var lastLSN: LSN
    /// The source's durable end as its last reply reported it; nil until a reply ended.
    public var sourceEnd: LSN?
    /// Records installed (durable in the receiver's store) by this run.
    public var recordsInstalled = 0
    /// Bytes of those records (their encoded size, as in the log).
    public var recordBytesInstalled = 0
    /// Chunks installed.
    public var chunksInstalled = 0
    /// Bytes of every catch-up frame received (header, payload and checksum), refused ones too.
    public var wireBytes = 0
    /// Chunks that failed verification; none of their records was installed.
    public var chunksRefused = 0
    /// Replies read to their end.
    public var rounds = 0
    /// Connections opened to the source.
    public var connections = 0
    /// Attempts that failed and were retried (connection failures, refused chunks, timeouts).
    public var retries = 0
    /// The last error the receiver recovered from by reconnecting, if any.
    public var lastError: CatenaError?

    /// Creates progress at `lastLSN` with nothing done yet.
    public init(lastLSN: LSN) {
        self.lastLSN = lastLSN
    }

    /// Records the receiver lacks, by the source's last reported end (nil before it reported).
    public var lag: UInt64? {
        sourceEnd.map { $0.seq > lastLSN.seq ? $0.seq - lastLSN.seq : 0 }
    }

    /// Whether the receiver held every record of the source when the source last reported.
    public var isCaughtUp: Bool { lag == 0 }

    /// Bytes of records installed per byte received (1 before anything was received).
    public var compressionRatio: Double {
        wireBytes > 0 ? Double(recordBytesInstalled) / Double(wireBytes) : 1
    }
}

/// The receiving side of catch-up: copies the records a store lacks from a source node into it,
/// while the source keeps taking writes.
///
/// ``run(until:progress:)`` connects to the source as a client, asks for the records after the
/// store's last one (``CatchUpRequest``) and installs each chunk of the reply: it decodes and
/// verifies the whole chunk (``CatchUpChunk/records(after:chainID:maxUncompressedLength:)``),
/// then checks and enqueues it in one piece, so a damaged chunk installs nothing. While chunks
/// become durable it verifies the next ones, with at most ``Configuration/maxPendingBytes`` not
/// yet durable, so several chunks share one fsync.
/// When a reply ends it asks again from its new end, so it follows new writes until told to
/// stop. A broken connection or a refused chunk costs a reconnect (with backoff) and a request
/// from the last durable record: nothing installed is sent again, nothing is skipped.
///
/// The receiver must be the only writer of its store while it runs.
public struct CatchUpReceiver: Sendable {
    /// Where to copy from and how.
    public struct Configuration: Sendable {
        /// The source node (normally the chain's tail).
        public var source: Address
        /// The cluster; a source of another cluster is refused.
        public var clusterID: String
        /// The chain whose records are copied: every record must belong to it.
        public var chainID: ChainID
        /// The name the receiver gives in its hello (for the source's logs).
        public var name: String = "catch-up"
        /// Ask for LZ4-compressed chunks. Default true.
        public var compress = true
        /// Copy the source's whole log, which compaction may have thinned (seqs skip what it
        /// dropped): for an empty store whose source answered `historyCompacted`.
        public var fullCopy = false
        /// Bytes of records per chunk to ask for (the source holds it to
        /// ``CatchUpRequest/chunkBytesRange``). Default 4 MiB.
        public var maxChunkBytes = CatchUpRequest.defaultChunkBytes
        /// The largest single record accepted (it travels alone when above ``maxChunkBytes``).
        /// Default: the largest record a head accepts with these ``limits``
        /// (``WriteLimits/maxRecordLength(maxFrameSize:)``), and at least the store's
        /// ``StoreConfiguration/maxValueSize`` plus 1 MiB for key and fields.
        public var maxRecordBytes: Int?
        /// Bytes of records the receiver has enqueued in its store but not yet seen durable before
        /// it waits: several chunks share one group commit (fsync). Default 16 MiB.
        public var maxPendingBytes = 16 << 20
        /// The most bytes of records installed per second (nil: as fast as it goes). A copy at
        /// full speed competes with the chain's own writes for disks and CPUs; this bound is how
        /// an operator keeps foreground throughput up while a node joins.
        public var maxBytesPerSecond: Int?
        /// How long the bound holds. A copy slower than the chain's writes would never catch up,
        /// so after this the receiver copies at full speed (and says so).
        public var pacedFor: Duration = .seconds(60)
        /// How long the source may hold a request when there is nothing new (long poll; at most
        /// one second). Default 500 ms.
        public var wait: Duration = .milliseconds(500)
        /// A reply that sends nothing for this long (beyond the long poll) is given up. Default 10 s.
        public var idleTimeout: Duration = .seconds(10)
        /// The first pause before reconnecting; it doubles on each failure in a row. Default 50 ms.
        public var initialBackoff: Duration = .milliseconds(50)
        /// The longest pause before reconnecting. Default 2 s.
        public var maxBackoff: Duration = .seconds(2)
        /// Connection limits (the frame limit is raised to fit the largest chunk).
        public var limits = ConnectionLimits()

        /// Creates a configuration with the defaults above.
        public init(source: Address, clusterID: String, chainID: ChainID) {
            self.source = source
            self.clusterID = clusterID
            self.chainID = chainID
        }
    }

    /// The configuration.
    public let configuration: Configuration
    private let store: Store
    private let logger: Logger

    /// Creates a receiver that installs into `store`.
    public init(configuration: Configuration, store: Store, logger: Logger) {
        self.configuration = configuration
        self.store = store
        var logger = logger
        logger[metadataKey: LogKey.peer.rawValue] = "\(configuration.source)"
        self.logger = logger
    }

    /// Errors that retrying against the same source cannot cure: the receiver's history differs
    /// from the source's (``CatenaError/Code/lsnOutOfOrder``, ``CatenaError/Code/historyCompacted``),
    /// the source is not one it can talk to (another cluster or chain, no common protocol version,
    /// no catch-up), or it sends records this build cannot read.
    public static let finalErrors: Set<CatenaError.Code> = [
        .historyCompacted, .lsnOutOfOrder, .wrongCluster, .protocolVersionUnsupported, .unknownFrameType, .invalidArgument,
        .unsupportedVersion, .unknownRecordType, .unknownMustUnderstandField,
    ]

    /// Copies until `shouldStop` returns true (asked after every installed chunk and every reply)
    /// or the task is cancelled, and returns the progress then; calls `progress` after every
    /// installed chunk, every reply and every failure it retries (see
    /// ``CatchUpProgress/lastError``: a caller may give up on a source that keeps failing). Cancellation ends the run promptly, also in the middle of
    /// a chunk (which is then not installed); chunks already enqueued are awaited.
    ///
    /// Connection failures, timeouts and refused chunks are retried after a backoff. Throws
    /// the ``finalErrors`` (the caller truncates, copies in full or picks another source), and
    /// any failure of the local store (which refuses writes until reopened).
    public func run(
        until shouldStop: @escaping @Sendable (CatchUpProgress) -> Bool = { _ in false },
        progress report: @escaping @Sendable (CatchUpProgress) -> Void = { _ in }
    ) async throws(CatenaError) -> CatchUpProgress {
        var state = CatchUpProgress(lastLSN: store.highestLSN)
        var pacer = Pacer(rate: configuration.maxBytesPerSecond, for: configuration.pacedFor)
        var backoff = configuration.initialBackoff
        logger.info("catch-up starting", metadata: .catena([.lsn: "\(state.lastLSN)"]))
        while !Task.isCancelled {
            do throws(Failure) {
                let connection: RequestConnection
                do {
                    connection = try await connect()
                } catch {
                    throw .retry(error)
                }
                state.connections += 1
                defer { connection.close() }
                while !Task.isCancelled {
                    try await round(on: connection, &state, pacer: &pacer, shouldStop: shouldStop, report: report)
                    backoff = configuration.initialBackoff
                    report(state)
                    if shouldStop(state) { throw .stopped }
                }
            } catch {
                switch error {
                case .stopped:
                    logger.info("catch-up stopped", metadata: .catena([.lsn: "\(state.lastLSN)", .lagRecords: "\(state.lag.map { "\($0)" } ?? "?")"]))
                    return state
                case .fatal(let error):
                    logger.warning("catch-up failed", metadata: .catena([.error: "\(error)"]))
                    throw error
                case .retry(let error):
                    if Task.isCancelled { break }
                    state.lastError = error
                    state.retries += 1
                    report(state)
                    logger.debug("catch-up retrying", metadata: .catena([.error: "\(error)", .backoffMilliseconds: "\(backoff.nanosecondsClamped / 1_000_000)"]))
                    do {
                        try await Task.sleep(for: backoff)
                    } catch {
                        break
                    }
                    backoff = min(backoff * 2, configuration.maxBackoff)
                }
            }
        }
        logger.info("catch-up cancelled", metadata: .catena([.lsn: "\(state.lastLSN)"]))
        return state
    }

    /// How one attempt ended short of success.
    private enum Failure: Error {
        /// Reconnect after a backoff.
        case retry(CatenaError)
        /// Give up: the caller must act.
        case fatal(CatenaError)
        /// `shouldStop` said so.
        case stopped
    }

    private var maxUncompressedLength: Int {
        max(configuration.maxChunkBytes, configuration.maxRecordBytes
            ?? max(store.configuration.maxValueSize + (1 << 20), WriteLimits.maxRecordLength(maxFrameSize: configuration.limits.maxFrameSize)))
    }

    /// One request: installs its chunks until its last frame. Every chunk it enqueued is durable
    /// (or the store failed) when it returns or throws.
    private func round(on connection: RequestConnection, _ state: inout CatchUpProgress, pacer: inout Pacer,
                       shouldStop: @Sendable (CatchUpProgress) -> Bool,
                       report: @Sendable (CatchUpProgress) -> Void) async throws(Failure) {
        let after = store.lastEnqueuedLSN
        let fullCopy = configuration.fullCopy && after == .zero
        var flags: CatchUpFlags = configuration.compress ? [.lz4] : []
        if fullCopy { flags.insert(.fullCopy) }
        let request = CatchUpRequest(after: after, flags: flags,
                                     maxChunkBytes: configuration.maxChunkBytes,
                                     waitMilliseconds: Int(configuration.wait / .milliseconds(1)))
        let timeout = configuration.idleTimeout + configuration.wait
        var pending = Installing()
        do throws(Failure) {
            let replies: ReplyStream
            do {
                replies = try await connection.stream(Frame(type: .catchUpRequest, chainID: configuration.chainID, payload: request.encoded()),
                                                      timeout: timeout, window: 2)
            } catch {
                throw classify(error)
            }
            var previous = after
            while true {
                let frame: Frame
                do throws(CatenaError) {
                    guard let next = try await replies.next() else {
                        throw CatenaError(.protocolViolation, "\(configuration.source) ended a catch-up reply without its last chunk")
                    }
                    frame = next
                } catch {
                    throw classify(error)
                }
                state.wireBytes += frame.encodedSize
                let chunk: CatchUpChunk
                do throws(CatenaError) {
                    guard frame.type == .catchUpChunk else {
                        throw CatenaError(.protocolViolation, "\(configuration.source) answered a catch-up request with \(frame.type)")
                    }
                    chunk = try CatchUpChunk(decoding: frame.payload)
                } catch {
                    replies.abandon()
                    throw classify(error)
                }
                if !frame.flags.contains(.more) {
                    guard chunk.recordCount == 0 else {
                        throw .retry(CatenaError(.protocolViolation, "\(configuration.source) ended a catch-up reply with a chunk of records"))
                    }
                    try await pending.finish(&state)
                    state.sourceEnd = chunk.lastLSN
                    state.rounds += 1
                    return
                }
                let records: [EncodedRecord]
                do {
                    records = try chunk.records(after: previous, chainID: configuration.chainID, maxUncompressedLength: maxUncompressedLength,
                                                allowingGaps: fullCopy)
                } catch {
                    state.chunksRefused += 1
                    replies.abandon()
                    logger.warning("catch-up chunk refused", metadata: .catena([.error: "\(error)", .lsn: "\(previous)"]))
                    throw classify(error)
                }
                // Cancelled while the chunk arrived or was verified: install nothing more.
                if Task.isCancelled {
                    replies.abandon()
                    throw .retry(CatenaError(.closed, "catch-up was cancelled"))
                }
                let ticket: AppendTicket
                do {
                    // Records the chain took: an upload whose creation the source compacted away
                    // is no reason to refuse one (see UploadTracker).
                    try store.check(records, strict: false)
                    ticket = try store.enqueue(records, allowingGaps: fullCopy)
                    // In a full copy, what compaction dropped at the source is not in this log
                    // either: say so before anything could ask this store for it. (Otherwise the
                    // chunk was checked to be contiguous.)
                    if fullCopy {
                        var gapEnd: LSN?
                        var before = previous
                        for r in records {
                            if r.lsn.seq > before.seq + 1 { gapEnd = LSN(epoch: r.lsn.epoch, seq: r.lsn.seq - 1) }
                            before = r.lsn
                        }
                        if let gapEnd { try await store.markCompacted(through: gapEnd) }
                    }
                } catch {
                    throw .fatal(error)
                }
                previous = chunk.lastLSN
                pending.add(ticket, records: records.count, bytes: chunk.uncompressedLength, last: chunk.lastLSN)
                try await pending.finish(&state, keeping: configuration.maxPendingBytes)
                report(state)
                let wasExpired = pacer.expired
                let pause = pacer.pause(after: chunk.uncompressedLength)
                if pacer.expired && !wasExpired {
                    logger.notice("catch-up still behind after its paced time; copying at full speed so it can catch up with the chain's writes",
                                  metadata: .catena([.lsn: "\(chunk.lastLSN)"]))
                }
                if let pause {
                    do {
                        try await Task.sleep(for: pause)
                    } catch {
                        replies.abandon()
                        throw .retry(CatenaError(.closed, "catch-up was cancelled"))
                    }
                }
                if shouldStop(state) {
                    replies.abandon()
                    try await pending.finish(&state)
                    throw .stopped
                }
            }
        } catch {
            // Whatever happened, the enqueued chunks become durable (or the store failed).
            try await pending.finish(&state)
            throw error
        }
    }

    /// Paces installs to ``Configuration/maxBytesPerSecond`` for ``Configuration/pacedFor``: a
    /// token bucket holding at most one second of credit, so an idle spell does not turn into a
    /// burst.
    public struct Pacer: Sendable {
        /// Bytes per second; nil: no bound.
        public let rate: Int?
        private let until: ContinuousClock.Instant
        private var credit: Double
        private var last = ContinuousClock.now
        /// Whether the bound has expired (logged once).
        public private(set) var expired = false

        /// A pacer of `rate` bytes per second (nil: none) that holds for `duration`.
        public init(rate: Int?, for duration: Duration) {
            self.rate = rate
            self.until = .now + duration
            self.credit = Double(rate ?? 0)
        }

        /// `bytes` were installed: how long to wait before the next chunk, if at all.
        public mutating func pause(after bytes: Int) -> Duration? {
            guard let rate, rate > 0, !expired else { return nil }
            let now = ContinuousClock.now
            if now >= until {
                expired = true
                return nil
            }
            let elapsed = Double((now - last).nanosecondsClamped) / 1e9
            last = now
            credit = min(Double(rate), credit + elapsed * Double(rate)) - Double(bytes)
            guard credit < 0 else { return nil }
            return .nanoseconds(Int64(-credit / Double(rate) * 1e9))
        }
    }

    /// Chunks enqueued in the store but not yet known durable, oldest first.
    private struct Installing {
        private struct Chunk {
            var ticket: AppendTicket
            var records: Int
            var bytes: Int
            var last: LSN
        }

        private var chunks: [Chunk] = []
        private var bytes = 0

        mutating func add(_ ticket: AppendTicket, records: Int, bytes: Int, last: LSN) {
            chunks.append(Chunk(ticket: ticket, records: records, bytes: bytes, last: last))
            self.bytes += bytes
        }

        /// Waits, oldest first, until at most `limit` bytes (and the newest chunk, if that alone is
        /// more) are not known durable, counting each durable chunk in `state`.
        mutating func finish(_ state: inout CatchUpProgress, keeping limit: Int = 0) async throws(Failure) {
            while let oldest = chunks.first, bytes > limit, chunks.count > 1 || limit == 0 {
                chunks.removeFirst()
                bytes -= oldest.bytes
                do {
                    try await oldest.ticket.durable()
                } catch {
                    throw .fatal(error)
                }
                state.lastLSN = oldest.last
                state.recordsInstalled += oldest.records
                state.recordBytesInstalled += oldest.bytes
                state.chunksInstalled += 1
            }
        }
    }

    private func classify(_ error: CatenaError) -> Failure {
        Self.finalErrors.contains(error.code) ? .fatal(error) : .retry(error)
    }

    /// Connects to the source; cancellation returns at once (a connection that completes after
    /// that is closed).
    private func connect() async throws(CatenaError) -> RequestConnection {
        let limits = {
            var l = configuration.limits
            l.maxFrameSize = max(l.maxFrameSize, maxUncompressedLength + (64 << 10))
            return l
        }()
        let hello = Hello(role: .client, clusterID: configuration.clusterID, senderID: configuration.name)
        let source = configuration.source
        let race = ConnectRace()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<RequestConnection, CatenaError>, Never>) in
                guard race.wait(continuation) else { return }
                // RequestConnection.connect cannot be cancelled; it runs on, and its connection is
                // closed if nobody waits for it any more.
                Task {
                    let outcome = await Result.catching { () async throws(CatenaError) in
                        try await RequestConnection.connect(to: source, hello: hello, limits: limits)
                    }
                    race.deliver(outcome)
                }
            }
        } onCancel: {
            race.cancel()
        }
        return try result.get()
    }
}

/// A connection attempt and a cancellation racing to resume one waiter.
private final class ConnectRace: Sendable {
    private struct State {
        var waiter: CheckedContinuation<Result<RequestConnection, CatenaError>, Never>?
        var cancelled = false
    }

    private let state = Mutex(State())
    private static let cancelled = Result<RequestConnection, CatenaError>.failure(CatenaError(.closed, "catch-up was cancelled"))

    /// Installs the waiter; false (and resumed) if already cancelled.
    func wait(_ continuation: CheckedContinuation<Result<RequestConnection, CatenaError>, Never>) -> Bool {
        let cancelled = state.withLock { s in
            if !s.cancelled { s.waiter = continuation }
            return s.cancelled
        }
        if cancelled { continuation.resume(returning: Self.cancelled) }
        return !cancelled
    }

    /// The attempt's outcome: resumes the waiter, or closes a connection nobody waits for.
    func deliver(_ outcome: Result<RequestConnection, CatenaError>) {
        let waiter = state.withLock { s in
            defer { s.waiter = nil }
            return s.waiter
        }
        if let waiter {
            waiter.resume(returning: outcome)
        } else if case .success(let connection) = outcome {
            connection.close()
        }
    }

    func cancel() {
        let waiter = state.withLock { s in
            s.cancelled = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: Self.cancelled)
    }
}
