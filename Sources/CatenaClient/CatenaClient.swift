import CatenaCore
import CatenaNetwork
import CatenaWire
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A client of a Catena cluster: stores and fetches blobs under string keys.
///
/// ```swift
/// let store = try CatenaClient(masters: ["127.0.0.1:7000"])
/// try await store.put("photos/cat.jpg", data, contentType: "image/jpeg")
/// let object = try await store.get("photos/cat.jpg")
/// await store.close()
/// ```
///
/// Creating a client connects to nothing: it asks a master for the chain on its first call (or
/// on ``connect()``), so an application may start before its storage. After ``close()`` every
/// call throws `closed`.
///
/// Writes go to the chain's head and return once every replica holds them. Reads go to every
/// member in turn (``Configuration/readMode``, default `ReadMode.linearizable`): each
/// answers with the key's newest committed version — asking the tail which one that is when a
/// write of the key is in flight (CRAQ) — so a read sees every acknowledged write and nothing
/// uncommitted (linearizable), and a chain of three reads with three nodes' capacity. The client learns the chain
/// from the master and caches it; on a redirect, a stale epoch or a lost connection it asks the
/// master again and retries with bounded, jittered backoff until the request's deadline. A
/// retried write reuses its request id, so it applies at most once.
///
/// Every object carries an XXH3-64 content checksum computed here on put and checked here on
/// get. Objects larger than ``Configuration/chunkSize`` travel in chunks, pipelined, and become
/// visible only when complete.
public final class CatenaClient: Sendable {
    /// Client settings.
    public struct Configuration: Sendable {
        /// How long one operation (with its retries) may take.
        public var requestTimeout: Duration = .seconds(15)
        /// How long one attempt at one node may take before the client retries (same request
        /// id) with a fresh configuration: a paused or partitioned head or tail is left behind
        /// after this, and the master's failover takes about one failure timeout.
        public var attemptTimeout: Duration = .seconds(2)
        /// Objects larger than this are stored in chunks of this size.
        public var chunkSize: Int = 1 << 20
        /// Chunks of one streamed put (or one part of a multipart upload) in flight at once.
        public var chunkWindow: Int = 8
        /// Chunks in flight at once over the whole client, whatever the number of streamed puts
        /// and parts being stored side by side: the client's memory for chunks stays below
        /// about this many chunks (each travels as a few copies of ``chunkSize`` bytes).
        /// Default 8: one streamed put's window, which parts stored side by side share.
        public var maxChunksInFlight: Int = 8
        /// The cluster id; nil: learn it from the master.
        public var clusterID: String?
        /// The name this client gives in its hello (logs).
        public var name: String = "catena-client"
        /// Connection limits.
        public var connectionLimits = ConnectionLimits()
        /// The largest object ``CatenaClient/get(_:upTo:)`` reads into memory unless the call
        /// names its own limit; a larger one is refused with `valueTooLarge` by the tail, before
        /// it sends any of its bytes (``CatenaClient/getStreaming(_:)`` reads objects of any
        /// size piece by piece). Default 1 GiB.
        public var maxGetSize: Int = 1 << 30
        /// Idle connections kept per node for ``CatenaClient/getStreaming(_:)``, beyond the
        /// ones every other request shares. Default 4.
        public var idleStreamConnectionsPerNode: Int = 4
        /// Connections to each node that requests share, taken in turn (1 ... 64). One carries
        /// many requests at once (requests sent together share a system call); several spread
        /// a busy client's requests over several sockets and event loops. Default 1.
        public var connectionsPerNode: Int = 1
        /// When and how often a failed attempt is retried.
        public var retry = RetryPolicy()
        /// What a read (``CatenaClient/get(_:upTo:)``, ``CatenaClient/head(_:)``, streams and
        /// ranges) may return, and so which members answer it: `ReadMode.linearizable`
        /// (the default: any member, CRAQ), `ReadMode.tail` (the tail only) or
        /// `ReadMode.any` (any member's newest version, possibly stale). Reads in modes
        /// other than `tail` are spread over the members in turn. Listings go to the tail.
        /// Per call: ``CatenaClient/with(requestTimeout:attemptTimeout:retry:readMode:ack:session:logger:)``.
        public var readMode: ReadMode = .linearizable
        /// When a write (put, delete, and each chunk of a large object) returns: once every
        /// member holds it (`AckMode.all`, the default: committed, never lost while a replica
        /// survives), once the first k do (`AckMode.first(_:)`), or once the head does
        /// (`AckMode.head`) — faster, and lost if those members fail before it reaches the
        /// rest (`AckMode`). A linearizable read sees a write only once it is committed,
        /// whatever its mode. Copies are answered once committed. Per call:
        /// ``CatenaClient/with(requestTimeout:attemptTimeout:retry:readMode:ack:session:logger:)``.
        public var ack: AckMode = .all

        /// The defaults above.
        public init() {}
    }

    /// When a request that failed with a retryable error (`redirect`, `staleEpoch`,
    /// `epochAhead`, `busy`, `unavailable`, `timeout`, a closed connection) is tried again:
    /// after a pause drawn at random between half and all of a backoff that starts at
    /// ``initialBackoff`` and doubles up to ``maxBackoff``, until ``maxAttempts`` attempts were
    /// made or the request's timeout comes. Writes keep their request id, so a retried write
    /// applies once.
    public struct RetryPolicy: Hashable, Sendable {
        /// Attempts in all, the first included; nil: as many as the request's timeout allows.
        /// Default nil.
        public var maxAttempts: Int?
        /// The first backoff. Default 10 ms.
        public var initialBackoff: Duration
        /// The longest backoff. Default 500 ms.
        public var maxBackoff: Duration

        /// A policy: `maxAttempts` attempts at most (nil: until the timeout), backoff from `initialBackoff` doubling up to `maxBackoff`.
        public init(maxAttempts: Int? = nil, initialBackoff: Duration = .milliseconds(10), maxBackoff: Duration = .milliseconds(500)) {
            self.maxAttempts = maxAttempts
            self.initialBackoff = initialBackoff
            self.maxBackoff = maxBackoff
        }

        /// One attempt only: the first error is the answer.
        public static let never = RetryPolicy(maxAttempts: 1)

        /// The backoff before attempt `attempt + 1` (`attempt` ≥ 1), before jitter.
        func backoff(after attempt: Int) -> Duration {
            var pause = initialBackoff
            for _ in 1..<max(1, min(attempt, 30)) where pause < maxBackoff { pause = pause * 2 }
            return min(pause, maxBackoff)
        }
    }

    /// What every view of this client (``with(requestTimeout:attemptTimeout:retry:readMode:ack:session:logger:)``)
    /// shares: its connections, the chain it routes by, its request ids, whether it is closed.
    private let core: Core
    let configuration: Configuration
    private let logger: Logger
    /// What this client has written and read (``Session``): what its reads in mode
    /// `ReadMode.any` must find. Shared by the views made with ``with(requestTimeout:attemptTimeout:retry:readMode:ack:session:logger:)``
    /// unless one names another; export it with ``Session/token``.
    public let session: Session

    private final class Core: Sendable {
        let masters: [Address]
        let pool: ConnectionPool
        /// Connections of ``getStreaming(_:)``'s streams, one per open stream.
        let streams: StreamConnections
        let chain = Mutex<ChainConfiguration?>(nil)
        /// Whether `chain` should be refreshed before the next attempt (after a redirect, a
        /// stale epoch, a lost connection…). It is kept meanwhile: if no master answers, the
        /// client goes on with it — the chain serves without the master for as long as the
        /// leases last.
        let chainStale = Mutex(false)
        /// Open connections to the head and tail of `chain`'s configuration (the fast path: no
        /// actor hop, no address parsing per request); cleared with the configuration.
        let routes = Mutex<Routes>(Routes())
        /// Turns through the connections of `routes`.
        let turn = Atomic<Int>(0)
        /// Request ids: random, from a generator seeded once from the system's (one syscall per
        /// client, not two per request).
        let ids: Mutex<SplitMix64>
        /// Set by ``close()``: every call from then on throws `closed`.
        let closed = Atomic<Bool>(false)
        /// Chunks in flight over the whole client (``Configuration/maxChunksInFlight``).
        let chunkPermits: Permits

        init(masters: [Address], configuration: Configuration) {
            self.chunkPermits = Permits(max(1, configuration.maxChunksInFlight))
            self.masters = masters
            self.pool = ConnectionPool(name: configuration.name, clusterID: configuration.clusterID, limits: configuration.connectionLimits)
            self.streams = StreamConnections(name: configuration.name, clusterID: configuration.clusterID, limits: configuration.connectionLimits,
                                             idlePerNode: configuration.idleStreamConnectionsPerNode)
            var seed = SystemRandomNumberGenerator()
            self.ids = Mutex(SplitMix64(seed: seed.next()))
        }
    }

    private var masters: [Address] { core.masters }
    private var pool: ConnectionPool { core.pool }
    private var streams: StreamConnections { core.streams }

    private struct Routes {
        var epoch: UInt64 = 0
        /// By member (its place in the chain) and slot (``Configuration/connectionsPerNode``).
        var connections: [Slot: RequestConnection] = [:]

        struct Slot: Hashable {
            var member: Int
            var slot: Int
        }
    }

    /// A client of the cluster whose master(s) are at `masters` (`HOST:PORT` each, tried in
    /// turn). Connects to nothing yet: the first call (or ``connect()``) asks a master for the
    /// chain. Throws `invalidArgument` for a missing or malformed address.
    public init(masters: [String], configuration: Configuration = Configuration(),
                logger: Logger = Logger(label: "catena.client")) throws(CatenaError) {
        guard !masters.isEmpty else { throw CatenaError(.invalidArgument, "no master address given") }
        guard (1...64).contains(configuration.connectionsPerNode) else {
            throw CatenaError(.invalidArgument, "connectionsPerNode must be 1 ... 64, not \(configuration.connectionsPerNode)")
        }
        if let attempts = configuration.retry.maxAttempts, attempts < 1 {
            throw CatenaError(.invalidArgument, "retry.maxAttempts must be at least 1, not \(attempts)")
        }
        var parsed: [Address] = []
        for m in masters { parsed.append(try Address(parsing: m)) }
        self.core = Core(masters: parsed, configuration: configuration)
        self.configuration = configuration
        self.logger = logger
        self.session = Session()
    }

    private init(core: Core, configuration: Configuration, logger: Logger, session: Session) {
        self.core = core
        self.configuration = configuration
        self.logger = logger
        self.session = session
    }

    /// A view of this client whose calls take other timeouts, another retry policy or another
    /// logger; nil keeps this one's. It shares everything else — connections, the chain it
    /// routes by, being closed — so it is cheap to make per call:
    /// `try await store.with(requestTimeout: .seconds(1)).get("k")`.
    public func with(requestTimeout: Duration? = nil, attemptTimeout: Duration? = nil, retry: RetryPolicy? = nil,
                     readMode: ReadMode? = nil, ack: AckMode? = nil, session: Session? = nil, logger: Logger? = nil) -> CatenaClient {
        var c = configuration
        if let readMode { c.readMode = readMode }
        if let ack { c.ack = ack }
        if let requestTimeout { c.requestTimeout = requestTimeout }
        if let attemptTimeout { c.attemptTimeout = attemptTimeout }
        if let retry { c.retry = retry }
        return CatenaClient(core: core, configuration: c, logger: logger ?? self.logger, session: session ?? self.session)
    }

    /// What this client's reads may return (``Configuration/readMode``).
    public var readMode: ReadMode { configuration.readMode }

    /// When this client's writes return (``Configuration/ack``).
    public var ack: AckMode { configuration.ack }

    /// Asks the masters for the chain's configuration now, retrying until
    /// ``Configuration/requestTimeout``: for an application that wants to know at start-up that
    /// its storage answers. Throws `unavailable` or `timeout` if no master answered,
    /// `wrongCluster` if one belongs to another cluster, `closed` after ``close()``.
    public func connect() async throws(CatenaError) {
        try checkOpen()
        _ = try await refreshConfiguration(deadline: .now + configuration.requestTimeout)
    }

    /// Closes every connection. Calls in flight end with `closed` (a write among them may or
    /// may not have applied); every later call throws `closed`. Closing twice does nothing more.
    public func close() async {
        core.closed.store(true, ordering: .sequentiallyConsistent)
        core.routes.withLock { $0 = Routes() }
        streams.closeAll()
        await pool.closeAll()
    }

    /// Whether ``close()`` was called.
    public var isClosed: Bool { core.closed.load(ordering: .sequentiallyConsistent) }

    private func checkOpen() throws(CatenaError) {
        if isClosed { throw Self.closedError }
    }

    private static let closedError = CatenaError(.closed, "the client was closed")

    /// The chain configuration the client routes by (refreshed on redirects and failures).
    public var chainConfiguration: ChainConfiguration? { core.chain.withLock { $0 } }

    // MARK: - Writes

    /// Stores `value` under `key`, replacing any earlier version; returns once every replica
    /// holds it. Values above ``Configuration/chunkSize`` are stored in chunks.
    ///
    /// With a `condition`, the write applies only if the key's newest version — committed or
    /// still in flight — meets it when the head takes the write (compare-and-swap); otherwise
    /// it throws `preconditionFailed` and nothing is stored. See `WriteCondition`.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8], contentType: String? = nil,
                    metadata: [String: String] = [:], condition: WriteCondition? = nil) async throws(CatenaError) -> WriteReceipt {
        if value.count > configuration.chunkSize {
            return try await putChunked(key, pieces: Pieces(value), contentType: contentType, metadata: metadata, condition: condition)
        }
        let k = try Key(key)
        let request = WriteRequest(requestID: newRequestID(), type: .put, key: k, value: value,
                                   extensions: RecordExtension.objectFields(contentType: contentType, metadata: metadata), condition: condition)
        let lsn = try await write(request)
        return WriteReceipt(key: k, lsn: lsn, size: UInt64(value.count), contentChecksum: request.contentChecksum)
    }

    /// Stores `value` under `key` (see the `[UInt8]` overload of `put(_:_:contentType:metadata:condition:)`).
    @discardableResult
    public func put(_ key: String, _ value: Data, contentType: String? = nil,
                    metadata: [String: String] = [:], condition: WriteCondition? = nil) async throws(CatenaError) -> WriteReceipt {
        try await put(key, [UInt8](value), contentType: contentType, metadata: metadata, condition: condition)
    }

    /// Stores `value` under `key` (see the `[UInt8]` overload of `put(_:_:contentType:metadata:condition:)`).
    @discardableResult
    public func put(_ key: String, _ value: ByteBuffer, contentType: String? = nil,
                    metadata: [String: String] = [:], condition: WriteCondition? = nil) async throws(CatenaError) -> WriteReceipt {
        try await put(key, Array(value.readableBytesView), contentType: contentType, metadata: metadata, condition: condition)
    }

    /// Stores the bytes `body` yields under `key`, streaming: pieces are re-cut into chunks of
    /// ``Configuration/chunkSize``, up to ``Configuration/chunkWindow`` of them in flight, so the
    /// client holds a few chunks, never the object. The object becomes visible when its last
    /// chunk and manifest are stored; an interrupted upload leaves nothing visible. A
    /// `condition` is checked when the object would become visible, at its manifest: if it
    /// fails there, the uploaded chunks are left to expire.
    @discardableResult
    public func put<Body: AsyncSequence & Sendable>(_ key: String, streaming body: Body, contentType: String? = nil,
                                                    metadata: [String: String] = [:], condition: WriteCondition? = nil) async throws(CatenaError) -> WriteReceipt
    where Body.Element == [UInt8] {
        try await putChunked(key, pieces: body, contentType: contentType, metadata: metadata, condition: condition)
    }

    /// Stores the file at `path` under `key`, streaming it in chunks to its end (the client
    /// holds a few chunks, never the file; a pipe or a device is read to its end too).
    /// `progress` is called as its bytes are stored, with the file's size as the total (nil for
    /// what is not a regular file). Throws `notFound` or `permissionDenied` if the file cannot
    /// be opened.
    @discardableResult
    public func put(_ key: String, contentsOf path: String, contentType: String? = nil, metadata: [String: String] = [:],
                    condition: WriteCondition? = nil, progress: TransferProgress? = nil) async throws(CatenaError) -> WriteReceipt {
        let file = try LocalFile(reading: path)
        let total = file.isRegular ? file.size : nil
        let chunkSize = configuration.chunkSize
        // One chunk or less: a plain put. More: the chunks read so far, then the rest.
        let first = try file.read(chunkSize)
        let second = first.count < chunkSize ? [] : try file.read(chunkSize)
        if second.isEmpty {
            let receipt = try await put(key, first, contentType: contentType, metadata: metadata, condition: condition)
            progress?(UInt64(first.count), total)
            return receipt
        }
        return try await putChunked(key, pieces: file.pieces(of: chunkSize, after: [first, second]), contentType: contentType,
                                    metadata: metadata, condition: condition, total: total, progress: progress)
    }

    /// Stores the bytes `body` yields as `ByteBuffer`s under `key`, streaming, as the `[UInt8]`
    /// form of `put(_:streaming:contentType:metadata:condition:)` does: the buffers are cut into
    /// chunks of ``Configuration/chunkSize`` as they come, a few chunks in flight.
    @discardableResult
    public func put<Body: AsyncSequence & Sendable>(_ key: String, streaming body: Body, contentType: String? = nil,
                                                    metadata: [String: String] = [:], condition: WriteCondition? = nil) async throws(CatenaError) -> WriteReceipt
    where Body.Element == ByteBuffer {
        try await putChunked(key, pieces: ByteBufferPieces(base: body), contentType: contentType, metadata: metadata, condition: condition)
    }

    /// Deletes `key`. Deleting a missing key succeeds.
    ///
    /// With a `condition` (`.version(_:)` or
    /// `.contentChecksum(_:)`), the delete applies only if the key's newest
    /// version meets it when the head takes the delete; otherwise it throws
    /// `preconditionFailed` and the object stays.
    @discardableResult
    public func delete(_ key: String, condition: WriteCondition? = nil) async throws(CatenaError) -> LSN {
        let k = try Key(key)
        if let condition { try WriteCondition.check(condition, on: .delete, key: k) }
        return try await write(WriteRequest(requestID: newRequestID(), type: .delete, key: k, condition: condition))
    }

    /// Deletes every key of `keys`, up to `concurrency` at once, and says for each — in the
    /// order given — whether it was deleted (deleting a missing key succeeds) or why not. Not
    /// atomic: each key is its own write, so some may be deleted and others not; retried
    /// writes apply once. An invalid key fails alone, before anything is sent for it.
    public func delete(_ keys: [String], concurrency: Int = 16) async -> [DeleteResult] {
        let outcomes = await Self.concurrently(keys.count, width: concurrency) { i in
            await Result.catching { () async throws(CatenaError) in try await self.delete(keys[i]) }
        }
        return zip(keys, outcomes.results).map { DeleteResult(key: $0, outcome: $1!) }
    }

    /// Runs `body(0)` ... `body(count - 1)`, at most `width` at once, and returns their results
    /// by index, and the first failure to come. `stopOnFailure`: after the first failure, the
    /// running ones are cancelled and no more start (the results of those never started are nil).
    static func concurrently<R: Sendable>(_ count: Int, width: Int, stopOnFailure: Bool = false,
                                          _ body: @escaping @Sendable (Int) async -> Result<R, CatenaError>) async
        -> (results: [Result<R, CatenaError>?], firstFailure: CatenaError?) {
        var results = [Result<R, CatenaError>?](repeating: nil, count: count)
        var firstFailure: CatenaError?
        await withTaskGroup(of: (Int, Result<R, CatenaError>).self) { group in
            var next = 0
            var failed = false
            func start() {
                let i = next
                next += 1
                group.addTask { (i, await body(i)) }
            }
            while next < min(max(1, width), count) { start() }
            while let (i, outcome) = await group.next() {
                results[i] = outcome
                if case .failure(let error) = outcome {
                    firstFailure = firstFailure ?? error
                    if stopOnFailure && !failed {
                        failed = true
                        group.cancelAll()
                    }
                }
                if !failed && next < count { start() }
            }
        }
        return (results, firstFailure)
    }

    // MARK: - Reads

    /// Whether an object is stored under `key` (its metadata is asked for, not its bytes).
    public func exists(_ key: String) async throws(CatenaError) -> Bool {
        do {
            _ = try await head(key)
            return true
        } catch where error.code == .notFound {
            return false
        }
    }

    /// The object under `key`: its metadata and bytes, checked against its content checksum.
    /// Throws `notFound` if there is none, and `valueTooLarge` if it is larger than `maxBytes`
    /// (default ``Configuration/maxGetSize``; read such objects with ``getStreaming(_:)``): the
    /// limit travels with the request and the tail refuses before sending any byte (a tail from
    /// before the limit sends the object, which is then dropped as it comes).
    public func get(_ key: String, upTo maxBytes: Int? = nil) async throws(CatenaError) -> StoredObject {
        let limit = maxBytes ?? configuration.maxGetSize
        guard limit >= 0 else { throw CatenaError(.invalidArgument, "get's limit must not be negative, not \(limit)") }
        // On the connection every request shares: this call reads every frame as it comes. The
        // limit goes with the request, so the tail refuses a larger object before sending it.
        let stream = try await openStream(key, maxSize: UInt64(limit), dedicated: false)
        guard stream.info.size <= UInt64(limit) else {
            throw CatenaError(.valueTooLarge, "'\(key)' holds \(stream.info.size) bytes, more than this get's limit of \(limit); read it with getStreaming")
        }
        return StoredObject(info: stream.info, bytes: try await stream.readAll())
    }

    /// The object under `key` as a stream of chunks, read as the consumer asks for them: while
    /// it lags, its connection stops reading and the tail stops sending. Each open stream has a
    /// connection of its own (kept for later streams once read to the end), so a stream that is
    /// read slowly or not at all holds up no other request. The content checksum is checked
    /// when the last chunk arrives; a mismatch is thrown then. Throws `notFound` if there is none.
    public func getStreaming(_ key: String) async throws(CatenaError) -> ObjectStream {
        try await openStream(key, dedicated: true)
    }

    /// Writes the object under `key` to the file at `path`, streaming: into `path` plus
    /// `.catena-partial`, synced and renamed over `path` only once the whole object arrived
    /// and matched its content checksum, so a failed read never leaves a partial file.
    /// `progress` is called as bytes arrive, with the object's size as the total. Returns the
    /// object's metadata.
    @discardableResult
    public func get(_ key: String, into path: String, progress: TransferProgress? = nil) async throws(CatenaError) -> ObjectInfo {
        let stream = try await getStreaming(key)
        try await stream.write(to: path, progress: progress)
        return stream.info
    }


    /// Bytes `range` of the object under `key` — its end clamped to the object's size — read by
    /// the tail without reading the rest (a chunked object from the chunk that holds the
    /// offset). Every record the range reaches into is verified by the tail; the content
    /// checksum covers the whole object and is not checked. Throws `notFound`,
    /// `invalidArgument` if the range starts past the object's end, and `valueTooLarge` if the
    /// range holds more than `maxBytes` (default ``Configuration/maxGetSize``).
    public func get(_ key: String, range: Range<UInt64>, upTo maxBytes: Int? = nil) async throws(CatenaError) -> ObjectRange {
        let limit = maxBytes ?? configuration.maxGetSize
        guard limit >= 0 else { throw CatenaError(.invalidArgument, "get's limit must not be negative, not \(limit)") }
        // On a connection of its own: a tail from before ranges ends the connection it gets a
        // `getRange` on, which must not be one other requests share.
        let stream = try await openStream(key, range: range, dedicated: true)
        let served = stream.servedRange
        guard served.count <= limit else {
            throw CatenaError(.valueTooLarge, "the range holds \(served.count) bytes of '\(key)', more than this get's limit of \(limit); read it with getStreaming")
        }
        return ObjectRange(info: stream.info, range: served, bytes: try await stream.readAll())
    }

    /// Bytes `range` of the object under `key` as a stream (see ``get(_:range:upTo:)`` and
    /// ``getStreaming(_:)``); ``ObjectStream/servedRange`` says which bytes it yields.
    public func getStreaming(_ key: String, range: Range<UInt64>) async throws(CatenaError) -> ObjectStream {
        try await openStream(key, range: range, dedicated: true)
    }

    /// Sends a get and reads its first frame, the object's info. `dedicated`: on a connection
    /// of the stream's own (``StreamConnections``), given back once the stream is done.
    private func openStream(_ key: String, range: Range<UInt64>? = nil, maxSize: UInt64? = nil,
                            dedicated: Bool) async throws(CatenaError) -> ObjectStream {
        let k = try Key(key)
        let options = readOptions.encoded()
        let request = range.map { Frame(type: .getRange, headerExtension: options, payload: RangeRequest(key: k, offset: $0.lowerBound, length: $0.upperBound - $0.lowerBound).encoded()) }
            ?? Frame(type: .get, headerExtension: options, payload: GetPayload.encode(k, maxSize: maxSize))
        return try await withRetries(readRoute) { (shared, chain, timeout) async throws(CatenaError) -> ObjectStream in
            let lease = dedicated ? try await streams.lease(to: shared.address, clusterID: chain.clusterID) : nil
            let connection = lease?.connection ?? shared
            var replies: ReplyStream?
            do throws(CatenaError) {
                var frame = request
                frame.chainID = chain.chainID
                frame.epoch = chain.epoch
                let stream = try await connection.stream(frame, timeout: timeout, window: 4)
                replies = stream
                guard let first = try await stream.next() else {
                    throw CatenaError(.protocolViolation, "\(connection.address) sent an empty reply to get")
                }
                guard first.type == .objectInfo else {
                    throw CatenaError(.protocolViolation, "\(connection.address) answered get with \(first.type)")
                }
                let info = try ObjectInfoPayload.decode(first.payload)
                guard info.key == k else {
                    throw CatenaError(.protocolViolation, "\(connection.address) answered get '\(k)' with '\(info.key)'")
                }
                if let range, range.lowerBound > info.size {
                    throw CatenaError(.protocolViolation, "\(connection.address) served a range past the end of '\(k)'")
                }
                session.observe(info.lsn)
                return ObjectStream(info: info, range: range, replies: stream, lease: lease)
            } catch {
                // A reply this client cannot use is abandoned, so its remaining frames do not
                // stall the connection; a dedicated connection with frames still to come closes.
                let receivedAll = replies?.receivedAll ?? true
                replies?.abandon()
                lease?.end(receivedAll: receivedAll)
                if range != nil && error.code == .unknownFrameType {
                    throw CatenaError(.protocolVersionUnsupported, "\(connection.address) does not serve byte ranges: \(error.message)")
                }
                throw error
            }
        }
    }

    /// The metadata of `key`'s object (size, LSN, content checksum, content type, user
    /// metadata). Throws `notFound` if there is none.
    public func head(_ key: String) async throws(CatenaError) -> ObjectInfo {
        let k = try Key(key)
        return try await withRetries(readRoute) { (connection, chain, timeout) async throws(CatenaError) -> ObjectInfo in
            let frame = Frame(type: .head, chainID: chain.chainID, epoch: chain.epoch,
                              headerExtension: readOptions.encoded(), payload: KeyPayload.encode(k))
            let info = try ObjectInfoPayload.decode(try await connection.request(frame, timeout: timeout).payload)
            guard info.key == k else { throw CatenaError(.protocolViolation, "\(connection.address) answered head '\(k)' with '\(info.key)'") }
            session.observe(info.lsn)
            return info
        }
    }

    /// One page of the keys starting with `prefix`, in byte order, after `after` (the previous
    /// page's `ListPage.nextCursor`). With a `delimiter` (S3's "folders"), keys that hold it
    /// after the prefix come back rolled up into `ListPage.commonPrefixes` — each cut just
    /// after that delimiter, listed once — and `limit` counts both; a tail that does not know
    /// delimiters is refused with `protocolVersionUnsupported` rather than believed.
    public func list(prefix: String = "", delimiter: String? = nil, after: Key? = nil, limit: Int = 1000) async throws(CatenaError) -> ListPage {
        let wanted = Array((delimiter ?? "").utf8)
        guard wanted.count <= Key.maxLength else { throw CatenaError(.invalidArgument, "a delimiter of \(wanted.count) bytes is longer than any key") }
        let request = ListRequest(prefix: Array(prefix.utf8), after: after, limit: limit, delimiter: wanted)
        return try await askTail(.list, request.encoded()) { (reply, connection) throws(CatenaError) -> ListPage in
            let (page, grouped) = try ListPagePayload.decodeGrouped(reply.payload)
            if !wanted.isEmpty && !grouped {
                throw CatenaError(.protocolVersionUnsupported, "\(connection.address) does not list by delimiter")
            }
            return page
        }
    }

    /// Every object whose key starts with `prefix`, page by page.
    public func listAll(prefix: String = "", pageSize: Int = 1000) -> AsyncThrowingStream<ObjectInfo, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                var cursor: Key?
                do {
                    repeat {
                        let page = try await self.list(prefix: prefix, after: cursor, limit: pageSize)
                        for info in page.objects { continuation.yield(info) }
                        cursor = page.nextCursor
                    } while cursor != nil
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    // MARK: - Internals

    /// Sends a write to the head, retrying with the same request id. A write the head would
    /// refuse for its size or its metadata (``WriteLimits``) is refused here, before sending.
    /// Its errors carry its request id (a chunk's do not: only the write that makes an object
    /// visible is worth settling).
    ///
    /// A conditional write refused after more than one attempt is settled before the refusal is
    /// reported: an earlier attempt the client gave up on may still reach the head after the
    /// refusal, find its condition true by then, and apply. The settlement either finds it
    /// applied (the call returns its LSN) or fences the request id, so the refusal is final.
    func write(_ request: WriteRequest) async throws(CatenaError) -> LSN {
        try WriteLimits.check(request, maxFrameSize: configuration.connectionLimits.maxFrameSize)
        return try await sendWrite(request.requestID, key: request.key, type: .write, payload: WritePayload.encode(request),
                                   settleable: request.type != .chunk)
    }

    /// Sends a write-like request (a write, a copy) to the head, retrying with the same request
    /// id, and settles a `preconditionFailed` that came after more than one attempt (see
    /// `write(_:)`). `attemptTimeout`: one attempt's limit instead of the configuration's (a copy
    /// takes as long as its object). The errors of a `settleable` request carry its id.
    private func sendWrite(_ id: RequestID, key: Key, type: FrameType, payload: ByteBuffer, settleable: Bool,
                           attemptTimeout: Duration? = nil) async throws(CatenaError) -> LSN {
        let attempts = Mutex(0)
        // Writes in a weaker acknowledgement mode say so (a copy is answered once committed).
        let options = type == .write ? RequestOptions(ack: configuration.ack).encoded() : []
        do throws(CatenaError) {
            do throws(CatenaError) {
                return try await withRetries(.head) { (connection, chain, timeout) async throws(CatenaError) -> LSN in
                    attempts.withLock { $0 += 1 }
                    let frame = Frame(type: type, chainID: chain.chainID, epoch: chain.epoch, headerExtension: options, payload: payload)
                    let reply = try await connection.request(frame, timeout: attemptTimeout ?? timeout)
                    let lsn = try LSNPayload.decode(reply.payload)
                    session.observe(lsn)
                    return lsn
                }
            } catch {
                guard settleable, error.code == .preconditionFailed, attempts.withLock({ $0 }) > 1 else { throw error }
                switch try await outcome(ofWrite: id, key: key.string) {
                case .applied(let lsn): return lsn
                case .notApplied: throw error
                }
            }
        } catch {
            var e = error
            if settleable { e.requestID = id }
            throw e
        }
    }

    /// Copies the object stored under `source` to `destination`, inside the cluster: the chain's
    /// head reads it from its own log and writes the copy, so its bytes do not travel to this
    /// client. The copy keeps the content checksum, content type and metadata, and is verified
    /// as it is read; it is written like any put (a large object in chunks, visible only when
    /// complete). `condition` is the destination's (see `put`). Returns the copy's LSN; throws
    /// `notFound` if there is no source. A copy of a large object takes as long as writing it:
    /// one attempt may take the whole ``Configuration/requestTimeout``. Retried, it applies once;
    /// its errors carry its request id for ``outcome(ofWrite:key:)`` (with `destination`).
    @discardableResult
    public func copy(from source: String, to destination: String, condition: WriteCondition? = nil) async throws(CatenaError) -> LSN {
        let request = CopyRequest(requestID: newRequestID(), source: try Key(source), destination: try Key(destination), condition: condition)
        if let condition { try WriteCondition.check(condition, on: .put, key: request.destination) }
        return try await sendWrite(request.requestID, key: request.destination, type: .copy, payload: request.encoded(), settleable: true,
                                   attemptTimeout: configuration.requestTimeout)
    }

    // MARK: - Settling ambiguous outcomes

    /// Whether the write with `requestID` (of `key`) was applied — the question a `timeout`,
    /// `cancelled` or `unavailable` error leaves open; the error's `CatenaError.requestID`
    /// names the write.
    ///
    /// The answer is final. The head looks the request id up among the writes it remembers (for
    /// the request-id window, 60 s by default): a write it took is answered ``WriteOutcome/applied(_:)``
    /// with its LSN once committed; for one it never took, it appends a fence under that id
    /// and answers ``WriteOutcome/notApplied`` once the fence is committed — from then on every
    /// head refuses the write (`notApplied`), should a copy of it still arrive (one a paused node
    /// or a slow connection held back). Asking again gets the same answer. A head that may have
    /// forgotten writes as old as this one (sent before the oldest it remembers — after the
    /// window, or after a restart for writes before it) cannot tell "never taken" from
    /// "forgotten" and refuses with `settlementExpired` rather than guess: ask soon after the
    /// failure. The request id records when the write was sent (this client makes it so); for
    /// an id from elsewhere the answer is given only by a head that has forgotten nothing.
    /// Throws like a write when the chain cannot answer (`timeout`: ask again).
    public func outcome(ofWrite requestID: RequestID, key: String) async throws(CatenaError) -> WriteOutcome {
        guard requestID != .none else { throw CatenaError(.invalidArgument, "request id 0 names no write") }
        do {
            return .applied(try await write(.fence(requestID: requestID, key: try Key(key), sentAt: Self.sentAt(requestID))))
        } catch {
            guard error.code == .notApplied else { throw error }
            return .notApplied
        }
    }

    private func putChunked<Body: AsyncSequence>(_ key: String, pieces body: Body, contentType: String?,
                                                 metadata: [String: String], condition: WriteCondition?, total expected: UInt64? = nil,
                                                 progress: TransferProgress? = nil) async throws(CatenaError) -> WriteReceipt
    where Body.Element == [UInt8] {
        let k = try Key(key)
        let upload = newRequestID()
        let group = try await storeChunks(k, group: upload, pieces: body, total: expected, progress: progress)
        let manifest = Manifest(upload: upload, chunkCount: group.chunkCount, totalSize: group.size)
        let request = WriteRequest(requestID: newRequestID(), type: .manifest, key: k, value: manifest.encoded(), contentChecksum: group.checksum,
                                   extensions: RecordExtension.objectFields(contentType: contentType, metadata: metadata), condition: condition)
        let lsn = try await write(request)
        return WriteReceipt(key: k, lsn: lsn, size: group.size, contentChecksum: group.checksum)
    }

    /// Stores the bytes `body` yields as the chunk group `group` of `key`: cut into chunks of
    /// ``Configuration/chunkSize``, up to ``Configuration/chunkWindow`` of them in flight (the
    /// client holds a few chunks, never the whole). Returns how many chunks, how many bytes and
    /// their XXH3-64. Nothing is visible until a manifest or part record names the group.
    func storeChunks<Body: AsyncSequence>(_ k: Key, group upload: UploadID, pieces body: Body, total expected: UInt64? = nil,
                                          progress: TransferProgress? = nil) async throws(CatenaError) -> (chunkCount: UInt32, size: UInt64, checksum: UInt64)
    where Body.Element == [UInt8] {
        let hasher = XXH3Hasher()
        var total: UInt64 = 0
        var index: UInt32 = 0
        let chunkSize = configuration.chunkSize
        let window = max(1, configuration.chunkWindow)
        var stored: UInt64 = 0
        let result: Result<Void, CatenaError> = await withTaskGroup(of: Result<Int, CatenaError>.self) { group in
            var running = 0
            var failure: CatenaError?
            func settle(_ r: Result<Int, CatenaError>) {
                switch r {
                case .success(let n):
                    stored += UInt64(n)
                    progress?(stored, expected)
                case .failure(let e):
                    failure = failure ?? e
                }
            }
            let permits = core.chunkPermits
            func send(_ chunk: [UInt8]) async {
                if running >= window, let r = await group.next() {
                    running -= 1
                    settle(r)
                }
                // A permit of the client's: other puts and parts may hold the rest.
                guard await permits.acquire() else {
                    failure = failure ?? CatenaError(.cancelled, "the upload was cancelled")
                    return
                }
                let request = WriteRequest(requestID: newRequestID(), type: .chunk, key: k, value: chunk,
                                           extensions: [RecordExtension.chunkAddress(ChunkAddress(upload: upload, index: index))])
                index += 1
                running += 1
                group.addTask {
                    defer { permits.release() }
                    return await Result.catching { () async throws(CatenaError) -> Int in
                        _ = try await self.write(request)
                        return request.value.count
                    }
                }
            }
            var buffer: [UInt8] = []
            buffer.reserveCapacity(chunkSize)
            do {
                for try await piece in body {
                    hasher.update(piece)
                    total += UInt64(piece.count)
                    var rest = piece[...]
                    while !rest.isEmpty, failure == nil {
                        let n = min(chunkSize - buffer.count, rest.count)
                        buffer += rest.prefix(n)
                        rest = rest.dropFirst(n)
                        if buffer.count == chunkSize {
                            await send(buffer)
                            buffer.removeAll(keepingCapacity: true)
                        }
                    }
                    if failure != nil { break }
                }
            } catch {
                failure = failure ?? (error as? CatenaError) ?? CatenaError(.invalidArgument, "the object's body failed: \(error)")
            }
            if failure == nil, !buffer.isEmpty || index == 0 { await send(buffer) }
            for await r in group { settle(r) }
            return failure.map { .failure($0) } ?? .success(())
        }
        try result.get()
        return (index, total, hasher.digest())
    }

    /// Where a request goes: the chain's head, its tail, or any member — taken in turn, so
    /// reads that any member may answer are spread over all of them.
    enum Route { case head, tail, anyMember }

    /// Where this client's reads go: the tail in mode `ReadMode.tail`, else any member.
    var readRoute: Route { configuration.readMode == .tail ? .tail : .anyMember }

    /// A read's options: its mode and, in mode any, what its session has seen.
    var readOptions: RequestOptions {
        let seen = session.lsn
        return RequestOptions(readMode: configuration.readMode, session: configuration.readMode == .any && seen != .zero ? seen : nil)
    }

    /// One read request to the tail, retried as every request is; `decode` reads the reply
    /// (its errors are the attempt's) on the connection it came by.
    func askTail<R>(_ type: FrameType, _ payload: ByteBuffer,
                    _ decode: (Frame, RequestConnection) throws(CatenaError) -> R) async throws(CatenaError) -> R {
        try await withRetries(.tail) { (connection, chain, timeout) async throws(CatenaError) -> R in
            let reply = try await connection.request(Frame(type: type, chainID: chain.chainID, epoch: chain.epoch, payload: payload), timeout: timeout)
            return try decode(reply, connection)
        }
    }

    /// Runs `body` against the chain's head or tail, refreshing the configuration and retrying
    /// on redirects, stale epochs, busy nodes and lost connections until the deadline.
    func withRetries<R>(_ route: Route, _ body: (RequestConnection, ChainConfiguration, Duration) async throws(CatenaError) -> R) async throws(CatenaError) -> R {
        let deadline = ContinuousClock.now + configuration.requestTimeout
        var attempt = 0
        var lastError: CatenaError?
        while true {
            do throws(CatenaError) {
                try checkOpen()
                let chain = try await currentConfiguration(deadline: deadline)
                guard !chain.members.isEmpty else {
                    throw CatenaError(.unavailable, "chain \(chain.chainID) has no members at epoch \(chain.epoch)")
                }
                // The node's connections are taken in turn, and so are the members for requests any
                // of them answers; a connection not open yet is opened.
                let turn = core.turn.wrappingAdd(1, ordering: .relaxed).oldValue & Int.max
                let slot = turn % configuration.connectionsPerNode
                let index = switch route {
                case .head: 0
                case .tail: chain.members.count - 1
                case .anyMember: (turn / configuration.connectionsPerNode) % chain.members.count
                }
                let key = Routes.Slot(member: index, slot: slot)
                let cached: RequestConnection? = core.routes.withLock { r in
                    guard r.epoch == chain.epoch, let c = r.connections[key], !c.isClosed else { return nil }
                    return c
                }
                let timeout = min(configuration.attemptTimeout, max(.milliseconds(1), deadline - .now))
                if let cached { return try await body(cached, chain, timeout) }
                let member = chain.members[index]
                let connection = try await pool.connection(to: try Address(parsing: member.address), index: slot, clusterID: chain.clusterID)
                core.routes.withLock { r in
                    if r.epoch != chain.epoch { r = Routes(epoch: chain.epoch) }
                    r.connections[key] = connection
                }
                return try await body(connection, chain, timeout)
            } catch {
                // A closed client makes no more attempts: its connections are gone for good.
                if isClosed { throw error.code == .closed ? error : CatenaError(.closed, "the client was closed; last error: \(error)") }
                // A cancelled caller gets no more attempts (its sleeps would return at once); a
                // definitive answer stays what it is.
                if Task.isCancelled, Self.retryable(error.code) {
                    throw CatenaError(.cancelled, "the calling task was cancelled; last error: \(error)")
                }
                guard Self.retryable(error.code), ContinuousClock.now < deadline else {
                    if error.code == .timeout, let lastError, lastError.code != .timeout {
                        throw CatenaError(.timeout, "\(error.message) (before that: \(lastError))")
                    }
                    throw error
                }
                lastError = error
                logger.debug("retrying", metadata: .catena([.error: "\(error)", .attempt: "\(attempt)"]))
                if error.code != .busy {
                    core.chainStale.withLock { $0 = true }
                    core.routes.withLock { $0 = Routes() }
                }
                attempt += 1
                if let most = configuration.retry.maxAttempts, attempt >= most {
                    throw attempt == 1 ? error : CatenaError(error.code, "\(error.message) (after \(attempt) attempts)")
                }
                let cap = configuration.retry.backoff(after: attempt).nanosecondsClamped
                let pause = Duration.nanoseconds(Int64.random(in: cap / 2...max(cap / 2, cap)))
                if ContinuousClock.now + pause >= deadline {
                    throw CatenaError(.timeout, "gave up at the deadline; last error: \(error)")
                }
                try? await Task.sleep(for: pause)
            }
        }
    }

    /// A fresh request id that records when it was made: the top byte of its high half is
    /// ``timedIDMarker``, the low half's top 42 bits the wall clock in milliseconds; the other 78
    /// bits are random. ``outcome(ofWrite:key:)`` tells the head when the write was sent from it.
    func newRequestID() -> RequestID {
        let random = core.ids.withLock { RequestID.random(using: &$0) }
        let milliseconds = UInt64(max(0, Date().timeIntervalSince1970 * 1000)) & ((1 << 42) - 1)
        return RequestID(high: Self.timedIDMarker << 56 | random.high & ((1 << 56) - 1),
                         low: milliseconds << 22 | random.low & ((1 << 22) - 1))
    }

    /// Marks a request id this client made (see `newRequestID()`).
    static let timedIDMarker: UInt64 = 0xCA

    /// When a request id this client made was made, in ns since 1970; 0 for another id.
    static func sentAt(_ id: RequestID) -> UInt64 {
        guard id.high >> 56 == timedIDMarker else { return 0 }
        return (id.low >> 22) * 1_000_000
    }

    static func retryable(_ code: CatenaError.Code) -> Bool {
        [.redirect, .staleEpoch, .epochAhead, .unavailable, .busy, .timeout, .closed].contains(code)
    }

    private func currentConfiguration(deadline: ContinuousClock.Instant) async throws(CatenaError) -> ChainConfiguration {
        guard let cached = core.chain.withLock({ $0 }) else { return try await refreshConfiguration(deadline: deadline) }
        guard core.chainStale.withLock({ $0 }) else { return cached }
        // One quick round over the masters; without an answer, the last configuration it had.
        do {
            return try await refreshConfiguration(deadline: min(deadline, .now + .milliseconds(500)))
        } catch {
            if error.code == .wrongCluster || error.code == .protocolVersionUnsupported || error.code == .cancelled { throw error }
            return cached
        }
    }

    /// Asks the masters in turn for the configuration.
    private func refreshConfiguration(deadline: ContinuousClock.Instant) async throws(CatenaError) -> ChainConfiguration {
        var lastError = CatenaError(.unavailable, "no master answered")
        var round = 0
        while ContinuousClock.now < deadline {
            if Task.isCancelled { throw CatenaError(.cancelled, "the calling task was cancelled; last error: \(lastError)") }
            try checkOpen()
            for master in masters {
                do {
                    let connection = try await pool.connection(to: master, clusterID: configuration.clusterID ?? "")
                    let reply = try await connection.request(Frame(type: .getConfiguration),
                                                             timeout: min(.seconds(2), max(.milliseconds(1), deadline - .now)))
                    let config = try ConfigurationPayload.decode(reply.payload)
                    let newest = core.chain.withLock { current in
                        if current == nil || current!.epoch <= config.epoch { current = config }
                        return current!
                    }
                    // Idle stream connections to nodes that left the chain are closed.
                    core.streams.keepIdle(to: Set(newest.members.compactMap { try? Address(parsing: $0.address) }))
                    core.chainStale.withLock { $0 = false }
                    return newest
                } catch {
                    if error.code == .wrongCluster || error.code == .protocolVersionUnsupported { throw error }
                    lastError = error
                    await pool.drop(master)
                }
            }
            round += 1
            // A round over every master counts as one attempt of the retry policy.
            if let most = configuration.retry.maxAttempts, round >= most { break }
            try? await Task.sleep(for: .milliseconds(min(50 * round, 500)))
        }
        throw CatenaError(lastError.code == .unavailable ? .unavailable : .timeout,
                          "no master of \(masters.map(\.description)) answered: \(lastError.message)")
    }
}

/// A client runs as a `Service` in an application's `ServiceGroup`, beside the services that
/// use it: ``run()`` waits for the group's graceful shutdown (or cancellation) and then closes
/// the client. Calls work whether or not it runs.
extension CatenaClient: Service {
    /// Waits until the service group shuts down gracefully or the task is cancelled, then
    /// ``close()``s the client.
    public func run() async throws {
        try? await gracefulShutdown()
        await close()
    }
}

/// Whether a write was applied (``CatenaClient/outcome(ofWrite:key:)``).
public enum WriteOutcome: Hashable, Sendable {
    /// It was applied and committed, at this LSN.
    case applied(LSN)
    /// It was not applied, and never will be.
    case notApplied
}

/// What a committed write returns.
public struct WriteReceipt: Hashable, Sendable {
    /// The key written.
    public var key: Key
    /// Where the write is in the chain's log.
    public var lsn: LSN
    /// Bytes stored.
    public var size: UInt64
    /// XXH3-64 of the content, as stored.
    public var contentChecksum: UInt64
}

/// Progress of a transfer: the bytes moved so far and, if known, the total.
public typealias TransferProgress = @Sendable (_ done: UInt64, _ total: UInt64?) -> Void

/// A local file a transfer reads or writes, with errors as ``CatenaError``s naming the path.
final class LocalFile: @unchecked Sendable {
    // One task uses it at a time (a put's reader, a get's writer).
    let path: String
    private var fd: Int32
    /// The size when opened (0 when created), and whether it is a regular file, whose size
    /// means something (a pipe's or a device's does not).
    let size: UInt64
    let isRegular: Bool

    init(reading path: String) throws(CatenaError) {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Self.error(errno, "cannot open", path) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw Self.error(e, "cannot stat", path)
        }
        size = UInt64(max(0, st.st_size))
        isRegular = (st.st_mode & S_IFMT) == S_IFREG
    }

    init(creating path: String) throws(CatenaError) {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Self.error(errno, "cannot create", path) }
        size = 0
        isRegular = true
    }

    deinit { close() }

    static func error(_ code: Int32, _ what: String, _ path: String) -> CatenaError {
        let message = "\(what) \(path): \(String(cString: strerror(code)))"
        switch code {
        case ENOENT, ENOTDIR: return CatenaError(.notFound, message)
        case EACCES, EPERM, EROFS: return CatenaError(.permissionDenied, message)
        case ENOSPC, EDQUOT: return CatenaError(.diskFull, message)
        default: return CatenaError(.ioFailure, message)
        }
    }

    /// Up to `count` bytes from the current position; fewer only at the end.
    func read(_ count: Int) throws(CatenaError) -> [UInt8] {
        try fill(count) { buffer, filled in Glibc.read(fd, buffer, count - filled) }
    }

    /// Up to `count` bytes at `offset` (the file position does not move); fewer only at the end.
    func read(at offset: UInt64, _ count: Int) throws(CatenaError) -> [UInt8] {
        try fill(count) { buffer, filled in pread(fd, buffer, count - filled, off_t(offset) + off_t(filled)) }
    }

    /// `count` bytes from repeated `read(into, alreadyFilled)` calls, until `count` or the end.
    private func fill(_ count: Int, _ read: (UnsafeMutableRawPointer, Int) -> Int) throws(CatenaError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let n = out.withUnsafeMutableBytes { read($0.baseAddress! + filled, filled) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.error(errno, "cannot read", path)
            }
            if n == 0 { break }
            filled += n
        }
        out.removeLast(count - filled)
        return out
    }

    /// `pieces` (read already), then the file from its current position to its end, in pieces
    /// of `pieceSize`.
    func pieces(of pieceSize: Int, after pieces: [[UInt8]] = []) -> FilePieces {
        FilePieces(file: self, pieceSize: max(1, pieceSize), prefix: pieces)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(CatenaError) {
        var written = 0
        while written < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + written, bytes.count - written)
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.error(errno, "cannot write", path)
            }
            written += n
        }
    }

    func syncAndClose() throws(CatenaError) {
        guard fsync(fd) == 0 else { throw Self.error(errno, "cannot sync", path) }
        close()
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}

/// A ``LocalFile``'s bytes as an `AsyncSequence` of pieces (for a streamed put).
struct FilePieces: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let file: LocalFile
    let pieceSize: Int
    let prefix: [[UInt8]]

    func makeAsyncIterator() -> Iterator { Iterator(file: file, pieceSize: pieceSize, prefix: prefix[...]) }

    struct Iterator: AsyncIteratorProtocol {
        let file: LocalFile
        let pieceSize: Int
        var prefix: ArraySlice<[UInt8]>

        mutating func next() async throws -> [UInt8]? {
            if let piece = prefix.popFirst() { return piece }
            let piece = try file.read(pieceSize)
            return piece.isEmpty ? nil : piece
        }
    }
}

extension FilePieces {
    /// The first `limit` bytes of the pieces.
    func prefix(bytes limit: UInt64) -> PrefixPieces<FilePieces> { PrefixPieces(base: self, limit: limit) }
}

/// The first `limit` bytes of a sequence of pieces.
struct PrefixPieces<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == [UInt8] {
    typealias Element = [UInt8]
    let base: Base
    let limit: UInt64

    func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator(), left: limit) }

    struct Iterator: AsyncIteratorProtocol {
        var base: Base.AsyncIterator
        var left: UInt64

        mutating func next() async throws -> [UInt8]? {
            guard left > 0, let piece = try await base.next() else { return nil }
            let kept = piece.count <= left ? piece : Array(piece.prefix(Int(left)))
            left -= UInt64(kept.count)
            return kept
        }
    }
}

/// Bytes `range` of a ``LocalFile`` as an `AsyncSequence` of pieces, read at their offsets (so
/// several ranges of one file can be read at once); ends early with the file.
struct FileRangePieces: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let file: LocalFile
    let range: Range<UInt64>
    let pieceSize: Int

    func makeAsyncIterator() -> Iterator { Iterator(file: file, next: range.lowerBound, end: range.upperBound, pieceSize: pieceSize) }

    struct Iterator: AsyncIteratorProtocol {
        let file: LocalFile
        var next: UInt64
        let end: UInt64
        let pieceSize: Int

        mutating func next() async throws -> [UInt8]? {
            guard next < end else { return nil }
            let piece = try file.read(at: next, Int(Swift.min(UInt64(pieceSize), end - next)))
            guard !piece.isEmpty else { return nil }
            next += UInt64(piece.count)
            return piece
        }
    }
}

/// A counting semaphore for tasks: ``acquire()`` waits for a permit, first come first served.
final class Permits: Sendable {
    private struct State {
        var available: Int
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Bool, Never>)] = []
        var nextID: UInt64 = 0
    }
    private let state: Mutex<State>

    init(_ count: Int) { state = Mutex(State(available: count)) }

    /// Waits for a permit; false (and no permit) if the task is cancelled first.
    func acquire() async -> Bool {
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let granted: Bool? = state.withLock { s in
                    // Cancelled before waiting (the handler found nobody to resume): no permit.
                    if Task.isCancelled { return false }
                    if s.available > 0 {
                        s.available -= 1
                        return true
                    }
                    s.waiters.append((id, continuation))
                    return nil
                }
                if let granted { continuation.resume(returning: granted) }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i).continuation
            }
            waiter?.resume(returning: false)
        }
    }

    /// Gives a permit back (to the longest waiter, if any).
    func release() {
        let next = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            guard !s.waiters.isEmpty else {
                s.available += 1
                return nil
            }
            return s.waiters.removeFirst().continuation
        }
        next?.resume(returning: true)
    }
}

/// What ``CatenaClient/delete(_:concurrency:)`` did with one key.
public struct DeleteResult: Sendable {
    /// The key.
    public var key: String
    /// The delete's LSN, or why it failed.
    public var outcome: Result<LSN, CatenaError>
}

/// Some bytes of an object (``CatenaClient/get(_:range:upTo:)``).
public struct ObjectRange: Hashable, Sendable {
    /// The whole object's metadata.
    public var info: ObjectInfo
    /// Which bytes: the range asked for, its end clamped to the object's size.
    public var range: Range<UInt64>
    /// Those bytes.
    public var bytes: [UInt8]
}

/// An object read in full.
public struct StoredObject: Hashable, Sendable {
    /// Its metadata.
    public var info: ObjectInfo
    /// Its bytes (checked against `ObjectInfo.contentChecksum`).
    public var bytes: [UInt8]
    /// Its bytes as `Data`.
    public var data: Data { Data(bytes) }
}

/// An object being read: metadata first, then its bytes as an `AsyncSequence` of chunks.
/// Iterate it once. The content checksum is verified as the last chunk arrives.
public struct ObjectStream: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    /// The object's metadata (of the whole object, for a ranged read too).
    public let info: ObjectInfo
    /// The bytes of the object the stream yields: all of them, or the range asked for with
    /// its end clamped to the object's size.
    public let servedRange: Range<UInt64>
    /// Whether only a range was asked for (then the content checksum, which covers the whole
    /// object, is not checked; the tail verified every record it read).
    public let isRange: Bool
    let owner: StreamOwner
    var replies: ReplyStream { owner.replies }

    init(info: ObjectInfo, range: Range<UInt64>? = nil, replies: ReplyStream, lease: StreamLease? = nil) {
        self.info = info
        self.servedRange = range.map { $0.lowerBound..<Swift.min($0.upperBound, info.size) } ?? 0..<info.size
        self.isRange = range != nil
        self.owner = StreamOwner(replies, lease: lease)
    }

    /// An iterator over the object's pieces (iterate the stream once).
    public func makeAsyncIterator() -> Iterator {
        Iterator(info: info, expected: UInt64(servedRange.count), owner: owner,
                 verifier: isRange ? nil : ContentVerifier(contentChecksum: info.contentChecksum, parts: info.parts))
    }

    /// Reads the stream (iterate it once) into one array: the bytes of ``servedRange``.
    func readAll() async throws(CatenaError) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(servedRange.count)
        var chunks = makeAsyncIterator()
        while let piece = try await chunks.nextBuffer() { bytes.append(contentsOf: piece.readableBytesView) }
        return bytes
    }

    /// Writes the stream's bytes (iterate it once) to the file at `path`: into `path` plus
    /// `.catena-partial`, synced and renamed over `path` only once the last piece arrived and
    /// checked out, so a failed read never leaves a partial file. `progress` is called as bytes
    /// arrive, with the bytes of ``servedRange`` as the total.
    public func write(to path: String, progress: TransferProgress? = nil) async throws(CatenaError) {
        let temporary = path + ".catena-partial"
        let file = try LocalFile(creating: temporary)
        do throws(CatenaError) {
            var received: UInt64 = 0
            var chunks = makeAsyncIterator()
            while let chunk = try await chunks.nextBuffer() {
                try chunk.withUnsafeReadableBytes { (bytes) throws(CatenaError) in try file.write(bytes) }
                received += UInt64(chunk.readableBytes)
                progress?(received, UInt64(servedRange.count))
            }
            try file.syncAndClose()
            guard rename(temporary, path) == 0 else {
                throw CatenaError(.ioFailure, "cannot rename \(temporary) to \(path): \(String(cString: strerror(errno)))")
            }
        } catch {
            file.close()
            unlink(temporary)
            throw error
        }
    }

    /// The same bytes as the `ByteBuffer`s they arrived in, without copying them into arrays;
    /// checked the same way. Iterate either this or the stream itself, once.
    public var byteBuffers: ByteBuffers { ByteBuffers(stream: self) }

    /// An ``ObjectStream``'s pieces as `ByteBuffer`s.
    public struct ByteBuffers: AsyncSequence, Sendable {
        public typealias Element = ByteBuffer
        let stream: ObjectStream

        /// An iterator over the pieces as `ByteBuffer`s.
        public func makeAsyncIterator() -> Iterator { Iterator(inner: stream.makeAsyncIterator()) }

        /// Yields the pieces as `ByteBuffer`s.
        public struct Iterator: AsyncIteratorProtocol {
            var inner: ObjectStream.Iterator

            /// The next piece, nil at the end; throws `checksumMismatch` or a transport error.
            public mutating func next() async throws -> ByteBuffer? { try await inner.nextBuffer() }
        }
    }

    /// Yields the object's bytes piece by piece.
    public struct Iterator: AsyncIteratorProtocol {
        let info: ObjectInfo
        /// Bytes due.
        let expected: UInt64
        let owner: StreamOwner
        var replies: ReplyStream { owner.replies }
        /// Checks the content checksum when the bytes are the whole object (not a range).
        let verifier: ContentVerifier?
        var received: UInt64 = 0
        var done = false

        /// The next chunk, nil at the end; throws `checksumMismatch` or a transport error.
        public mutating func next() async throws -> [UInt8]? { try await nextChunk() }

        /// The next chunk with a typed error.
        public mutating func nextChunk() async throws(CatenaError) -> [UInt8]? {
            try await nextBuffer().map { Array($0.readableBytesView) }
        }

        /// The next chunk as the `ByteBuffer` it arrived in (no copy), with a typed error.
        public mutating func nextBuffer() async throws(CatenaError) -> ByteBuffer? {
            while !done {
                guard let frame = try await replies.next() else {
                    throw CatenaError(.unavailable, "the object's stream ended early")
                }
                guard frame.type == .objectData else {
                    throw CatenaError(.protocolViolation, "unexpected \(frame.type) in an object's stream")
                }
                let piece = frame.payload
                if let verifier { piece.withUnsafeReadableBytes { verifier.update($0) } }
                received += UInt64(piece.readableBytes)
                if !frame.flags.contains(.more) {
                    done = true
                    guard received == expected else {
                        throw CatenaError(.checksumMismatch, "'\(info.key)': received \(received) bytes, expected \(expected)")
                    }
                    if let mismatch = verifier?.finish() {
                        throw CatenaError(.checksumMismatch, "'\(info.key)': \(mismatch); the object was not returned")
                    }
                }
                if piece.readableBytes > 0 { return piece }
            }
            return nil
        }
    }
}


/// Keeps a reply stream for an ``ObjectStream`` and its iterators; when the last of them is
/// dropped — read to the end or abandoned half-way — the rest of the stream is discarded as it
/// arrives instead of stalling the shared connection, and a connection of the stream's own is
/// given back (read to the end) or closed (frames still to come).
final class StreamOwner: Sendable {
    let replies: ReplyStream
    let lease: StreamLease?

    init(_ replies: ReplyStream, lease: StreamLease?) {
        self.replies = replies
        self.lease = lease
    }

    deinit {
        let receivedAll = replies.receivedAll
        replies.abandon()
        lease?.end(receivedAll: receivedAll)
    }
}

/// The connections ``CatenaClient/getStreaming(_:)`` reads objects on: one per open stream, so
/// that a stream its consumer does not read — whose connection then stops reading — holds up
/// nothing else. A connection whose stream was read to the end is kept for the next stream (at
/// most `idlePerNode` per node); one given back with frames still to come is closed, which
/// also tells the node to stop sending.
final class StreamConnections: Sendable {
    private let name: String
    private let clusterID: String?
    private let limits: ConnectionLimits
    private let idlePerNode: Int
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var idle: [Address: [RequestConnection]] = [:]
        var leased: [ObjectIdentifier: RequestConnection] = [:]
        var closed = false
    }

    init(name: String, clusterID: String?, limits: ConnectionLimits, idlePerNode: Int) {
        self.name = name
        self.clusterID = clusterID
        self.limits = limits
        self.idlePerNode = max(0, idlePerNode)
    }

    /// An idle connection to `address`, or a new one. Throws `closed` once ``closeAll()`` ran.
    func lease(to address: Address, clusterID learned: String) async throws(CatenaError) -> StreamLease {
        enum Pick { case closed, reuse(RequestConnection), open }
        let pick: Pick = state.withLock { s in
            if s.closed { return .closed }
            while let c = s.idle[address]?.popLast() {
                if !c.isClosed {
                    s.leased[ObjectIdentifier(c)] = c
                    return .reuse(c)
                }
            }
            return .open
        }
        let connection: RequestConnection
        switch pick {
        case .closed:
            throw CatenaError(.closed, "the client was closed")
        case .reuse(let c):
            connection = c
        case .open:
            let hello = Hello(role: .client, clusterID: clusterID ?? learned, senderID: name)
            connection = try await RequestConnection.connect(to: address, hello: hello, limits: limits)
            let kept = state.withLock { s in
                guard !s.closed else { return false }
                s.leased[ObjectIdentifier(connection)] = connection
                return true
            }
            guard kept else {
                connection.close()
                throw CatenaError(.closed, "the client was closed")
            }
        }
        return StreamLease(connection: connection, owner: self)
    }

    /// Takes `connection` back from its stream: kept if its stream received every frame and
    /// there is room, closed otherwise.
    fileprivate func giveBack(_ connection: RequestConnection, receivedAll: Bool) {
        let keep: Bool = state.withLock { s in
            s.leased[ObjectIdentifier(connection)] = nil
            guard receivedAll, !s.closed, !connection.isClosed, s.idle[connection.address, default: []].count < idlePerNode else { return false }
            s.idle[connection.address, default: []].append(connection)
            return true
        }
        if !keep { connection.close() }
    }

    /// Closes every connection, idle or streaming (their streams fail with `closed`); later
    /// leases throw `closed`.
    func closeAll() {
        let all: [RequestConnection] = state.withLock { s in
            s.closed = true
            defer {
                s.idle = [:]
                s.leased = [:]
            }
            return s.idle.values.flatMap { $0 } + Array(s.leased.values)
        }
        for c in all { c.close() }
    }

    /// Closes the idle connections to any address but `addresses` (the chain's members now).
    func keepIdle(to addresses: Set<Address>) {
        let gone: [RequestConnection] = state.withLock { s in
            let leaving = s.idle.keys.filter { !addresses.contains($0) }
            return leaving.flatMap { s.idle.removeValue(forKey: $0) ?? [] }
        }
        for c in gone { c.close() }
    }

    /// Connections kept idle now (for tests).
    var idleCount: Int { state.withLock { s in s.idle.values.reduce(0) { $0 + $1.count } } }
}

/// One stream's hold on a connection of ``StreamConnections``; ended once.
final class StreamLease: Sendable {
    let connection: RequestConnection
    private let owner: StreamConnections
    private let ended = Atomic<Bool>(false)

    fileprivate init(connection: RequestConnection, owner: StreamConnections) {
        self.connection = connection
        self.owner = owner
    }

    /// Gives the connection back (see ``StreamConnections/giveBack(_:receivedAll:)``).
    func end(receivedAll: Bool) {
        guard !ended.exchange(true, ordering: .acquiringAndReleasing) else { return }
        owner.giveBack(connection, receivedAll: receivedAll)
    }
}

/// `ByteBuffer`s as byte arrays (for the chunked put, which cuts them into chunks).
struct ByteBufferPieces<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
    typealias Element = [UInt8]
    let base: Base
    func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator()) }
    struct Iterator: AsyncIteratorProtocol {
        var base: Base.AsyncIterator
        mutating func next() async throws -> [UInt8]? {
            try await base.next().map { Array($0.readableBytesView) }
        }
    }
}

/// One in-memory value as an `AsyncSequence` of one piece.
struct Pieces: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let value: [UInt8]
    init(_ value: [UInt8]) { self.value = value }
    func makeAsyncIterator() -> Iterator { Iterator(value: value) }
    struct Iterator: AsyncIteratorProtocol {
        var value: [UInt8]?
        mutating func next() async -> [UInt8]? {
            defer { value = nil }
            return value
        }
    }
}

/// Connections by address, shared by every operation of a client.
actor ConnectionPool {
    private let name: String
    private let clusterID: String?
    private let limits: ConnectionLimits
    private var connections: [Slot: Task<RequestConnection, any Error>] = [:]
    private var closed = false

    /// A node's `index`th shared connection.
    struct Slot: Hashable {
        var address: Address
        var index: Int
    }

    init(name: String, clusterID: String?, limits: ConnectionLimits) {
        self.name = name
        self.clusterID = clusterID
        self.limits = limits
    }

    /// An open connection to `address` (its `index`th, for a client with several per node),
    /// opening one if needed.
    func connection(to address: Address, index: Int = 0, clusterID learned: String) async throws(CatenaError) -> RequestConnection {
        if closed { throw CatenaError(.closed, "the client was closed") }
        let slot = Slot(address: address, index: index)
        if let pending = connections[slot] {
            if let open = try? await pending.value, !open.isClosed { return open }
            if connections[slot] == pending { connections[slot] = nil }
        }
        let hello = Hello(role: .client, clusterID: clusterID ?? learned, senderID: name)
        let limits = self.limits
        let task = Task { () async throws -> RequestConnection in
            try await RequestConnection.connect(to: address, hello: hello, limits: limits)
        }
        connections[slot] = task
        do {
            let connection = try await task.value
            // Closed while it connected: closeAll did not see it.
            if closed { connection.close() }
            return connection
        } catch {
            if connections[slot] == task { connections[slot] = nil }
            throw (error as? CatenaError) ?? CatenaError(.unavailable, "\(error)")
        }
    }

    /// Forgets (and closes) the connections to `address`.
    func drop(_ address: Address) async {
        for slot in connections.keys where slot.address == address {
            if let task = connections.removeValue(forKey: slot), let c = try? await task.value { c.close() }
        }
    }

    /// Closes every connection; later ones throw `closed`.
    func closeAll() async {
        closed = true
        let all = connections
        connections = [:]
        for (_, task) in all { (try? await task.value)?.close() }
    }
}
