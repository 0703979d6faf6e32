import CatenaCatchUpWire
import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import NIOCore
import Synchronization

/// The node's side of its connections: client requests, and replication from the predecessor.
extension Node {
    func serve(_ connection: ServerConnection, _ reader: inout FrameReader) async throws(CatenaError) {
        switch connection.peer.role {
        case .node:
            try await serveReplication(connection, &reader)
        default:
            try await serveClient(connection, &reader)
        }
    }

    // MARK: - Clients

    /// Reads requests and answers them concurrently, so many writes of one client are in flight
    /// at once: at most ``NodeConfiguration/maxRequestsPerConnection``, and at most the bytes the
    /// connection's request budget admits (``ConnectionLimits``) — beyond either the connection
    /// is not read (TCP backpressure). A request's bytes count until it is answered. A malformed
    /// request gets an error reply and the connection goes on (its frame was intact); an unknown
    /// frame type ends the connection.
    ///
    /// Writes — the hot path — take no task of their own: the replica answers each through the
    /// connection's outlet once it commits (or at once if it is refused), coalescing the replies
    /// of a batch into one flush. Reads and everything else run in a child task each (off the event
    /// loop); a small object's reply frames go to the outbound writer together (one flush).
    private func serveClient(_ connection: ServerConnection, _ reader: inout FrameReader) async throws(CatenaError) {
        let slots = RequestSlots(limit: configuration.maxRequestsPerConnection)
        let outcome: Result<Void, CatenaError> = await withDiscardingTaskGroup { group in
            while true {
                let frame: Frame, received: ContinuousClock.Instant
                do throws(CatenaError) {
                    guard let next = try await reader.nextHeld() else { break }
                    frame = next
                    received = ContinuousClock.now
                } catch {
                    group.cancelAll()
                    return .failure(error)
                }
                guard FrameType.clientRequests.contains(frame.type) || frame.type == .ping else {
                    connection.release(frame)
                    group.cancelAll()
                    return .failure(CatenaError(.unknownFrameType, "frame type \(frame.type.rawValue) is not a request this node takes from a \(connection.peer.role)"))
                }
                await slots.take()
                if frame.type == .write {
                    let view = replica.view
                    let requests = self.requests
                    let write = Result { () throws(CatenaError) in try checkedWrite(frame) }
                    let op = (try? write.get()).map { RequestInstruments.op($0.type) } ?? "invalid"
                    @Sendable func answer(_ result: Result<LSN, CatenaError>) {
                        let epoch = view.snapshot.epoch
                        switch result {
                        case .success(let lsn):
                            connection.outlet.send(Frame(type: .writeResult, flags: .reply, chainID: frame.chainID, requestID: frame.requestID,
                                                         epoch: epoch, payload: LSNPayload.encode(lsn)))
                            requests.record(op, since: received, error: nil)
                        case .failure(let error):
                            connection.outlet.send(Frame.error(error, replyingTo: frame.requestID, chainID: frame.chainID, epoch: epoch))
                            requests.record(op, since: received, error: error)
                        }
                        connection.release(frame)
                        slots.give()
                    }
                    switch write {
                    case .success(let request): replica.submit(request, reply: answer)
                    case .failure(let error): answer(.failure(error))
                    }
                    continue
                }
                // Off the connection's event loop: a read may wait for the disk.
                group.addTask(executorPreference: globalConcurrentExecutor) {
                    await self.answer(frame, on: connection.outbound, received: received)
                    connection.release(frame)
                    slots.give()
                }
            }
            await slots.drain()
            return .success(())
        }
        try outcome.get()
    }

    /// The write `frame` carries, if it is for this chain, well formed, and fits the chain's frames.
    private func checkedWrite(_ frame: Frame) throws(CatenaError) -> WriteRequest {
        try checkChain(frame)
        var request = try WritePayload.decode(frame.payload)
        // When to answer (the mode travels in the request's options, not in the record).
        request.ack = try frame.options.ack ?? .all
        // Before an LSN: a record the chain cannot forward would stall replication.
        try WriteLimits.checkFitsFrames(request, maxFrameSize: configuration.connectionLimits.maxFrameSize)
        return request
    }

    /// Frames name their chain (0: unspecified, e.g. a ping): a request for another chain is
    /// refused rather than applied to this one.
    private func checkChain(_ frame: Frame) throws(CatenaError) {
        if frame.chainID != 0, let chain = replica.view.snapshot.configuration?.chainID, frame.chainID != chain {
            throw CatenaError(.invalidArgument, "this node serves chain \(chain), not chain \(frame.chainID)")
        }
    }

    /// Objects up to this size are read whole and their frames — info, bytes, end — handed to
    /// the outbound writer together: one hop to the event loop and one flush, not three. The
    /// writer still waits while the socket is full, so a client that does not read its replies
    /// holds at most its request slots' worth of them.
    static let smallObjectReply = 64 << 10

    /// The most keys one scrub page checks, whatever the request asks.
    static let scrubPageKeys = 1000
    /// The most bytes of object data one scrub page reads, whatever the request asks (a page
    /// takes at least one key, so a larger object is read alone).
    static let scrubPageBytes: UInt64 = 64 << 20

    private func answer(_ frame: Frame, on outbound: NIOAsyncChannelOutboundWriter<Frame>, received: ContinuousClock.Instant) async {
        let epoch = replica.view.snapshot.epoch
        var failure: CatenaError?
        defer { if let op = RequestInstruments.op(frame.type) { requests.record(op, since: received, error: failure) } }
        func reply(_ type: FrameType, _ payload: ByteBuffer, more: Bool = false) -> Frame {
            Frame(type: type, flags: more ? [.reply, .more] : .reply, chainID: frame.chainID, requestID: frame.requestID,
                  epoch: epoch, payload: payload)
        }
        do throws(CatenaError) {
            // Any node answers its status, whatever chain the asker thinks it serves.
            if frame.type == .getNodeStatus { return try await write(reply(.nodeStatus, status().encoded()), outbound) }
            try checkChain(frame)
            switch frame.type {
            case .ping:
                try await write(reply(.pong, ByteBuffer()), outbound)
            case .head:
                let options = try frame.options
                let mode = options.readMode ?? .tail
                try checkReads(mode)
                try await waitForSession(options.session, mode: mode)
                let key = try KeyPayload.decode(frame.payload)
                var found = try store.readInfo(key)
                if let version = try await committedVersion(of: key, read: found.lsn, mode: mode, frame) {
                    found = try version.map { lsn throws(CatenaError) in try store.readInfo(key, at: lsn) } ?? VersionedInfo(lsn: nil, info: nil)
                }
                try checkReads(mode)  // again, after the read: the lease, and still a member serving reads
                guard let info = found.info else { throw CatenaError(.notFound, "not found: \(key)") }
                try await write(reply(.objectInfo, ObjectInfoPayload.encode(info)), outbound)
            case .list:
                try checkReads()
                let request = try ListRequest(decoding: frame.payload)
                var page = try store.list(prefix: request.prefix, after: request.after, limit: min(max(request.limit, 1), 10_000),
                                          delimiter: request.delimiter)
                try checkLease()
                page = ListPagePayload.bounded(page, maxBytes: configuration.connectionLimits.maxFrameSize / 2)
                try await write(reply(.listPage, ListPagePayload.encode(page, grouped: !request.delimiter.isEmpty)), outbound)
            case .listUploads:
                try checkReads()
                let request = try ListUploadsRequest(decoding: frame.payload)
                var page = try store.listUploads(prefix: request.prefix, after: request.after, limit: min(max(request.limit, 1), 1000))
                try checkLease()
                page = UploadPagePayload.bounded(page, maxBytes: configuration.connectionLimits.maxFrameSize / 2)
                try await write(reply(.uploadPage, UploadPagePayload.encode(page)), outbound)
            case .listParts:
                try checkReads()
                let request = try ListPartsRequest(decoding: frame.payload)
                let page = try store.listParts(of: request.upload, after: request.after, limit: min(max(request.limit, 1), 1000))
                try checkLease()
                try await write(reply(.partPage, PartPagePayload.encode(page)), outbound)
            case .get, .getRange:
                let options = try frame.options
                let mode = options.readMode ?? .tail
                try checkReads(mode)
                try await waitForSession(options.session, mode: mode)
                let key: Key
                let range: Range<UInt64>?
                var maxSize: UInt64?
                if frame.type == .get {
                    (key, maxSize) = try GetPayload.decode(frame.payload)
                    range = nil
                } else {
                    let request = try RangeRequest(decoding: frame.payload)
                    key = request.key
                    range = request.range
                }
                var found: VersionedRead
                if let range {
                    // Which version first, then its bytes: a range checked against a newer version
                    // in flight (shorter, say) would be refused for a version the read never serves.
                    let newest = try store.readInfo(key).lsn
                    let chosen = try await committedVersion(of: key, read: newest, mode: mode, frame) ?? newest
                    found = try chosen.map { lsn throws(CatenaError) in try store.read(key, range: range, at: lsn) } ?? VersionedRead(lsn: nil, object: nil)
                } else {
                    found = try store.read(key)
                    if let version = try await committedVersion(of: key, read: found.lsn, mode: mode, frame) {
                        found = try version.map { lsn throws(CatenaError) in try store.read(key, at: lsn) } ?? VersionedRead(lsn: nil, object: nil)
                    }
                }
                try checkReads(mode)  // again, after the read: the lease, and still a member serving reads
                guard let object = found.object else { throw CatenaError(.notFound, "not found: \(key)") }
                // A client that takes at most `maxSize` bytes is refused before any is sent.
                if let maxSize, object.info.size > maxSize {
                    throw CatenaError(.valueTooLarge, "'\(key)' holds \(object.info.size) bytes, more than the get's limit of \(maxSize); read it with getStreaming")
                }
                let servedSize = object.body.servedSize
                if servedSize <= UInt64(Self.smallObjectReply) {
                    // Read and verified whole (the content checksum too, unless it is a range) before any frame goes.
                    let bytes = try await object.bytes()
                    var frames = [reply(.objectInfo, ObjectInfoPayload.encode(object.info), more: true)]
                    if !bytes.isEmpty { frames.append(reply(.objectData, ByteBuffer(bytes: bytes), more: true)) }
                    frames.append(reply(.objectData, ByteBuffer()))
                    try await write(frames, outbound)
                    return
                }
                try await write(reply(.objectInfo, ObjectInfoPayload.encode(object.info), more: true), outbound)
                // Pieces go out as they are read and verified; the last frame (no `more`) is sent
                // only after the whole content matched its checksum, so a reader never takes a
                // corrupt object as complete.
                var pieces = object.body.makeAsyncIterator()
                while let piece = try await pieces.nextPiece() {
                    var buffer = ByteBuffer()
                    buffer.writeBytes(piece)
                    try await write(reply(.objectData, buffer, more: true), outbound)
                }
                try await write(reply(.objectData, ByteBuffer()), outbound)
            case .scrub:
                // Every member answers for its own store (no tail, lease or read-target check):
                // a scrub reports what this replica holds, not a linearizable read. The node's
                // bounds keep one page's work — keys, and bytes read from disk — small.
                let request = try ScrubRequest(decoding: frame.payload)
                var page = try await store.scrub(prefix: request.prefix, after: request.after,
                                                 limit: min(max(request.limit, 1), Self.scrubPageKeys),
                                                 maxBytes: min(max(request.maxBytes, 1), Self.scrubPageBytes))
                page = ScrubPagePayload.bounded(page, maxBytes: configuration.connectionLimits.maxFrameSize / 2)
                try await write(reply(.scrubPage, ScrubPagePayload.encode(page)), outbound)
            case .copy:
                let lsn = try await copy(try CopyRequest(decoding: frame.payload))
                try await write(reply(.writeResult, LSNPayload.encode(lsn)), outbound)
            case .catchUpRequest:
                // Only the tail's durable log is all committed: a joiner copies from it alone.
                try replica.view.snapshot.node.checkCatchUpSource()
                let request = try CatchUpRequest(decoding: frame.payload)
                try await CatchUpSource.serve(request, store: store) { (chunk, more) throws(CatenaError) in
                    let encoded = chunk.encoded()
                    try await write(reply(.catchUpChunk, encoded, more: more), outbound)
                    requests.catchUpSentBytes.increment(by: encoded.readableBytes)
                }
            default:
                throw CatenaError(.unknownFrameType, "unexpected \(frame.type)")
            }
        } catch {
            failure = error
            if error.code == .checksumMismatch || error.code == .corruption {
                // Damage in this replica's store: the reader gets the error (and may read
                // another replica), the operator gets to know.
                logger.error("a read found damaged data in the local store and was refused",
                             metadata: .catena([.request: "\(frame.type)", .error: "\(error)"]))
            }
            try? await outbound.write(Frame.error(error, replyingTo: frame.requestID, chainID: frame.chainID, epoch: epoch))
        }
    }

    /// Whether this node may answer a read in `mode` (listings: the tail only). The rules are
    /// the node state machine's (``NodeStateMachine/View/checkReads(_:at:me:)``).
    private func checkReads(_ mode: ReadMode = .tail) throws(CatenaError) {
        try replica.view.snapshot.node.checkReads(mode, at: configuration.clock.nanoseconds, me: configuration.id)
    }

    /// How long a read in mode any waits for this node to hold everything its session has seen
    /// before it is sent elsewhere (`unavailable`: the client retries at the next member).
    static let sessionWait = Duration.milliseconds(100)

    /// Waits (at most ``sessionWait``) until this node holds everything through the reader's
    /// session (``NodeStateMachine/View/holdsSession(_:mode:applied:)``).
    private func waitForSession(_ session: LSN?, mode: ReadMode) async throws(CatenaError) {
        let deadline = ContinuousClock.now + Self.sessionWait
        while !replica.view.snapshot.node.holdsSession(session, mode: mode, applied: store.highestLSN) {
            guard ContinuousClock.now < deadline else {
                throw CatenaError(.unavailable, "\(configuration.id) holds the log through \(store.highestLSN), not yet through \(session ?? .zero) as the reader's session has seen; retry at another member")
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// A read in `mode` found `read` as the key's newest version here (nil: none). If that
    /// version may not be committed (``NodeStateMachine/View/committedVersionSource(mode:version:committed:)``),
    /// the tail is asked which one is: its LSN (`.some(nil)`: absent or deleted) is returned,
    /// for the read to serve that version from this store. Nil: serve what was read.
    private func committedVersion(of key: Key, read: LSN?, mode: ReadMode, _ frame: Frame) async throws(CatenaError) -> LSN?? {
        let view = replica.view.snapshot.node
        // Left its role since the read was admitted (e.g. its log holds writes the chain never
        // committed): nothing read here may be served.
        guard view.role != nil else {
            throw CatenaError(.redirect, "\(configuration.id) is no longer a member; ask the master")
        }
        guard let tail = view.committedVersionSource(mode: mode, version: read, committed: replica.committed),
              let chain = view.configuration else { return nil }
        requests.versionQueries.increment()
        return .some(try await tailVersions.committedVersion(of: key, chain: chain, tail: tail, timeout: .seconds(1)))
    }

    /// A tail the master could not renew may already be replaced, so a read is answered only if
    /// the lease is valid before the store is read and again after: then the version read was
    /// the latest committed one at a moment this node was the tail (a pause in between, of any
    /// length, fails the second check).
    private func checkLease() throws(CatenaError) {
        try replica.view.snapshot.node.checkLease(at: configuration.clock.nanoseconds, me: configuration.id)
    }

    private func write(_ frame: Frame, _ outbound: NIOAsyncChannelOutboundWriter<Frame>) async throws(CatenaError) {
        try await write(CollectionOfOne(frame), outbound)
    }

    /// Writes `frames` with one hop to the event loop and one flush.
    private func write(_ frames: some Sequence<Frame>, _ outbound: NIOAsyncChannelOutboundWriter<Frame>) async throws(CatenaError) {
        do {
            try await outbound.write(contentsOf: frames)
        } catch {
            throw CatenaError(.unavailable, "connection lost: \(error)")
        }
    }

    // MARK: - Replication

    /// The predecessor's connection: report our position and acknowledgement, then apply its
    /// records in order. A refused batch ends the connection; the predecessor reconnects and
    /// resends from the position we report then.
    private func serveReplication(_ connection: ServerConnection, _ reader: inout FrameReader) async throws(CatenaError) {
        let sender = try NodeID(connection.peer.senderID)
        let chainID = replica.view.snapshot.configuration?.chainID ?? 0
        let acks = AckSender(outlet: connection.outlet, chainID: chainID)
        guard let start = replica.attachUpstream(sender, acks: acks) else {
            let epoch = replica.view.snapshot.epoch
            throw CatenaError(.redirect, "\(sender) is not \(configuration.id)'s predecessor at epoch \(epoch)")
        }
        defer { replica.detachUpstream(acks) }
        // The position goes first, through the outlet the acknowledgements take after it.
        connection.outlet.send(Frame(type: .position, chainID: chainID, epoch: start.epoch, payload: LSNPayload.encode(start.position)))
        if start.acknowledged != .zero { acks.send(start.acknowledged, epoch: start.epoch) }
        let outcome: Result<Void, CatenaError> = await Result.catching { () async throws(CatenaError) in
            while let frame = try await reader.next() {
                if frame.type == .readTarget {
                    replica.readTarget(try LSNPayload.decode(frame.payload), from: sender)
                    continue
                }
                guard frame.type == .replicate else {
                    throw CatenaError(.unknownFrameType, "frame type \(frame.type.rawValue) is not replication")
                }
                let records = try ReplicatePayload.decode(frame.payload)
                if let error = replica.replicate(records, epoch: frame.epoch, from: sender) { throw error }
            }
        }
        try outcome.get()
    }
}

/// The requests one client connection may have in progress: ``take()`` waits while all are
/// taken; ``drain()`` waits until every one was given back (the connection's last replies).
final class RequestSlots: Sendable {
    private let limit: Int
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var taken = 0
        var waiter: CheckedContinuation<Void, Never>?
        /// Waiting for all (``drain()``) rather than for one.
        var waitsForAll = false
    }

    init(limit: Int) {
        self.limit = max(limit, 1)
    }

    /// Takes a slot, waiting for one if all are taken. One caller at a time.
    func take() async {
        let taken: Bool = state.withLock { s in
            guard s.taken < limit else { return false }
            s.taken += 1
            return true
        }
        if taken { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now: Bool = state.withLock { s in
                guard s.taken >= limit else {
                    s.taken += 1
                    return true
                }
                s.waiter = c
                s.waitsForAll = false
                return false
            }
            if now { c.resume() }
        }
    }

    /// Gives a slot back.
    func give() {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            s.taken -= 1
            guard let w = s.waiter else { return nil }
            if s.waitsForAll {
                guard s.taken == 0 else { return nil }
            } else {
                // The waiting taker gets this slot.
                s.taken += 1
            }
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }

    /// Waits until every slot was given back. One caller, after its last ``take()``.
    func drain() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now: Bool = state.withLock { s in
                guard s.taken > 0 else { return true }
                s.waiter = c
                s.waitsForAll = true
                return false
            }
            if now { c.resume() }
        }
    }
}
