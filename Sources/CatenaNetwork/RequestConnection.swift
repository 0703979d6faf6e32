import CatenaCore
import CatenaWire
import NIOCore
import NIOPosix
import Synchronization

/// One client-side connection carrying many concurrent requests, each paired with its replies
/// by the frame's request id. Replies may be one frame or a stream (frames flagged `more`, then
/// a last one). Each request has a deadline; when the connection fails every open request fails
/// with `unavailable` and later requests fail at once (the owner reconnects).
///
/// Replies are handed to their requests by a channel handler (``ReplyDispatcher``) on the
/// connection's event loop, as they are decoded: no task and no async sequence sit between the
/// socket and the caller waiting for the reply.
public final class RequestConnection: Sendable {
    /// The peer.
    public let address: Address
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var channel: (any Channel)?
        var outlet: FrameOutlet?
        var welcome: Welcome?
        var nextID: UInt64 = 1
        var waiters: [UInt64: Waiter] = [:]
        var failure: CatenaError?
    }

    /// A request's reply stream; `deadline` moves on with every reply frame (an idle timeout).
    private struct Waiter {
        var stream: ReplyStream
        var timeout: Duration
        var deadline: ContinuousClock.Instant
    }

    private init(address: Address) {
        self.address = address
    }

    /// Connects and completes the handshake: the peer must be in `hello`'s cluster and answer
    /// with a version both sides speak. Errors: `unavailable` (cannot connect, or the peer
    /// closed), `wrongCluster`, `protocolVersionUnsupported`, or the error frame the peer sent.
    public static func connect(to address: Address, hello: Hello, limits: ConnectionLimits = ConnectionLimits(),
                               group: any EventLoopGroup = FrameConnector.defaultGroup) async throws(CatenaError) -> RequestConnection {
        let connection = RequestConnection(address: address)
        /// The channel, and the promise of its first frame (made before any read, so a frame
        /// the peer sends at once is not missed).
        struct Opened: Sendable {
            var channel: any Channel
            var firstFrame: EventLoopFuture<Frame>
        }
        let opened: Opened
        do {
            opened = try await ClientBootstrap(group: group)
                .connectTimeout(.nanoseconds(limits.handshakeTimeout.nanosecondsClamped))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: address.host, port: Int(address.port)) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let first = channel.eventLoop.makePromise(of: Frame.self)
                        try limits.addFrameHandlers(channel)
                        try channel.pipeline.syncOperations.addHandler(ReplyDispatcher(connection, firstFrame: first))
                        return Opened(channel: channel, firstFrame: first.futureResult)
                    }
                }
        } catch {
            throw CatenaError(.unavailable, "cannot connect to \(address): \(error)")
        }
        let channel = opened.channel
        let welcome: Welcome
        do throws(CatenaError) {
            welcome = try await handshake(channel, firstFrame: opened.firstFrame, hello: hello, address: address,
                                          timeout: limits.handshakeTimeout)
        } catch {
            channel.close(promise: nil)
            throw error
        }
        let failure: CatenaError? = connection.state.withLock { s in
            s.channel = channel
            s.outlet = FrameOutlet(channel)
            s.welcome = welcome
            return s.failure
        }
        if let failure {
            channel.close(promise: nil)
            throw failure
        }
        RequestSweeper.shared.register(connection)
        channel.closeFuture.whenComplete { _ in connection.fail(CatenaError(.unavailable, "connection to \(address) closed")) }
        return connection
    }

    /// Sends the hello and waits for the peer's first frame, its welcome (closing the channel
    /// after `timeout`). A frame the peer sent before the hello arrived (a server past every
    /// connection slot answers `busy` at once) is that first frame too.
    private static func handshake(_ channel: any Channel, firstFrame: EventLoopFuture<Frame>, hello: Hello, address: Address,
                                  timeout: Duration) async throws(CatenaError) -> Welcome {
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) { channel.close(promise: nil) }
        defer { timer.cancel() }
        let frame: Frame
        do {
            // A failed write needs no handling here: the channel closes, and the first frame's
            // promise fails unless the peer's first frame came before.
            channel.writeAndFlush(Frame(type: .hello, payload: hello.encoded()), promise: nil)
            frame = try await firstFrame.get()
        } catch {
            throw FrameConnector.handshakeFailure(error, address: address)
        }
        return try FrameConnector.check(frame, hello: hello, address: address)
    }

    /// The peer's welcome: its cluster id and id, the negotiated version.
    public var welcome: Welcome? { state.withLock { $0.welcome } }

    /// Whether the connection has failed or was closed.
    public var isClosed: Bool { state.withLock { $0.failure != nil } }

    /// Sends `frame` (its request id is replaced) and returns the one reply. An error frame is
    /// thrown as the error it carries; no reply by `timeout` throws `timeout`.
    public func request(_ frame: Frame, timeout: Duration) async throws(CatenaError) -> Frame {
        let replies = try await stream(frame, timeout: timeout, window: 1)
        guard let reply = try await replies.next() else {
            throw CatenaError(.protocolViolation, "\(address) sent an empty reply")
        }
        // More frames would wait unread and stall the connection: drop them as they come.
        if reply.flags.contains(.more) { replies.abandon() }
        return reply
    }

    /// Sends `frame` and returns its reply frames as a stream, which buffers at most
    /// `window` frames (the connection stops reading while the consumer lags).
    public func stream(_ frame: Frame, timeout: Duration, window: Int = 16) async throws(CatenaError) -> ReplyStream {
        let stream = ReplyStream(window: window)
        var frame = frame
        let small = frame.payload.readableBytes <= Self.smallFrame
        let channel: (any Channel)? = try state.withLock { (s) throws(CatenaError) in
            if let failure = s.failure { throw failure }
            guard let channel = s.channel, let outlet = s.outlet else {
                throw CatenaError(.unavailable, "connection to \(address) is not established")
            }
            frame.requestID = s.nextID
            s.nextID += 1
            s.waiters[frame.requestID] = Waiter(stream: stream, timeout: timeout, deadline: .now + timeout)
            guard small else { return channel }
            // Under the lock, so requests leave in the order of their ids.
            outlet.send(frame)
            return nil
        }
        if let channel {
            // Waits until the frame is written: a large upload is not buffered whole. A frame
            // half written cannot be taken back: a peer that takes no bytes of it until the
            // request's deadline ends the connection (its other requests retry). A cancelled
            // caller stops waiting at once, but its frame goes on being written, so the
            // connection stays whole for the requests queued behind it; the reply is dropped.
            let written = channel.eventLoop.makePromise(of: Void.self)
            channel.writeAndFlush(frame, promise: written)
            let deadline = channel.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) {
                self.fail(CatenaError(.unavailable, "\(self.address) took no more bytes of a request within \(timeout)"))
            }
            written.futureResult.whenComplete { _ in deadline.cancel() }
            switch await Self.outcome(of: written.futureResult) {
            case .success:
                break
            case .failure(let error):
                fail(CatenaError(.unavailable, "cannot send to \(address): \(error)"))
            case nil:
                let requestID = frame.requestID
                _ = state.withLock { $0.waiters.removeValue(forKey: requestID) }
                stream.abandon()
                throw CatenaError(.cancelled, "the request to \(address) was cancelled while it was being sent; it may still apply")
            }
        }
        return stream
    }

    /// `future`'s result, or nil as soon as the calling task is cancelled (the future goes on).
    private static func outcome(of future: EventLoopFuture<Void>) async -> Result<Void, any Error>? {
        let once = OnceResume<Result<Void, any Error>?>()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Result<Void, any Error>?, Never>) in
                once.set(c)
                future.whenComplete { once.resume($0) }
            }
        } onCancel: {
            once.resume(nil)
        }
    }

    /// Requests up to this payload go out through the connection's ``FrameOutlet`` (no task
    /// hop; those sent together share a flush); larger ones are written and flushed alone, and
    /// the sender waits until they are written, so a large upload is not buffered whole.
    static let smallFrame = 64 << 10

    /// Closes the connection; open requests fail with `closed`.
    public func close() {
        fail(CatenaError(.closed, "connection to \(address) was closed"))
    }

    /// Hands a reply frame to its request (on the event loop). Returns false when that request's
    /// buffer is now full: the dispatcher stops reading until `whenSpace` runs.
    fileprivate func deliver(_ frame: Frame, on channel: any Channel, whenSpace: @escaping @Sendable () -> Void) -> Bool {
        let final = !frame.flags.contains(.more) || frame.type == .error
        let waiter: Waiter? = state.withLock { s in
            final ? s.waiters.removeValue(forKey: frame.requestID) : s.waiters[frame.requestID]
        }
        guard let waiter else {
            // A connection-level error (request id 0) ends the connection.
            if frame.type == .error && frame.requestID == 0 {
                fail((try? ErrorPayload.decode(frame.payload)) ?? CatenaError(.unavailable, "\(address) closed the connection"), from: channel)
            }
            return true
        }
        let room = waiter.stream.offer(frame, final: final, whenSpace: whenSpace)
        if !final {
            state.withLock { s in s.waiters[frame.requestID]?.deadline = .now + waiter.timeout }
        }
        return room
    }

    /// Fails requests whose deadline passed.
    fileprivate func expire(now: ContinuousClock.Instant) {
        let expired: [Waiter] = state.withLock { s in
            let ids = s.waiters.compactMap { id, w in
                w.deadline <= now && w.stream.timedOut(deadline: w.deadline, timeout: w.timeout, now: now) ? id : nil
            }
            return ids.compactMap { s.waiters.removeValue(forKey: $0) }
        }
        let error = CatenaError(.timeout, "no answer from \(address) in time")
        for w in expired { w.stream.fail(error) }
    }

    /// Fails the connection if `channel` is its channel (a connection attempt that lost to
    /// another for the same host reports nothing).
    fileprivate func fail(_ error: CatenaError, from channel: any Channel) {
        guard state.withLock({ s in s.channel.map { $0 === channel } ?? false }) else { return }
        fail(error)
    }

    fileprivate func fail(_ error: CatenaError) {
        let (waiters, channel): ([Waiter], (any Channel)?) = state.withLock { s in
            if s.failure == nil { s.failure = error }
            let w = Array(s.waiters.values)
            s.waiters = [:]
            s.outlet = nil
            defer { s.channel = nil }
            return (w, s.channel)
        }
        for w in waiters { w.stream.fail(error) }
        channel?.close(promise: nil)
        RequestSweeper.shared.unregister(self)
    }
}

/// The last handler of a ``RequestConnection``'s pipeline: the first frame is the handshake's
/// reply; every later one goes to its request's ``ReplyStream`` as it is decoded. While a
/// stream's buffer is full it stops reading the socket (TCP backpressure), and reads again once
/// the consumer made room. A decoding error or the end of the connection fails it.
final class ReplyDispatcher: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    private let connection: RequestConnection
    /// The first frame's promise, until it came.
    private var handshake: EventLoopPromise<Frame>?
    private var context: ChannelHandlerContext?
    /// A stream is full: reads wait.
    private var paused = false
    /// A read was asked for while paused.
    private var readPending = false
    /// Resumes reading, from any thread (set while the handler is in the pipeline).
    private var whenSpace: (@Sendable () -> Void)?

    init(_ connection: RequestConnection, firstFrame: EventLoopPromise<Frame>) {
        self.connection = connection
        self.handshake = firstFrame
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        whenSpace = { loop.execute { handler.value.resume() } }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        whenSpace = nil  // (it holds this handler)
        handshake?.fail(CatenaError(.unavailable, "connection to \(connection.address) closed"))
        handshake = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if let handshake {
            self.handshake = nil
            handshake.succeed(frame)
            return
        }
        if let whenSpace, !connection.deliver(frame, on: context.channel, whenSpace: whenSpace) {
            paused = true
        }
    }

    func read(context: ChannelHandlerContext) {
        if paused {
            readPending = true
        } else {
            context.read()
        }
    }

    private func resume() {
        guard paused else { return }
        paused = false
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = CatenaError(.unavailable, "connection to \(connection.address) closed")
        handshake?.fail(error)
        handshake = nil
        connection.fail(error, from: context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let address = connection.address
        // The handshake fails with the decoder's own error; an established connection fails its
        // requests with `unavailable`.
        handshake?.fail(error)
        handshake = nil
        let failure = (error as? CatenaError).map { e in e.code == .unavailable ? e : CatenaError(.unavailable, "\(address) sent a bad frame: \(e)") }
            ?? CatenaError(.unavailable, "connection to \(address) failed: \(error)")
        connection.fail(failure, from: context.channel)
        context.close(promise: nil)
    }
}

/// Fails the overdue requests of every open ``RequestConnection`` of the process, from one task
/// that wakes every 50 ms while any connection is open. (A task per connection woke 20 times a
/// second each: 1,280 thread wake-ups a second for a benchmark's 64 connections, about a third
/// of a context switch per request.)
final class RequestSweeper: Sendable {
    static let shared = RequestSweeper(interval: .milliseconds(50))

    private let interval: Duration
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var connections: [ObjectIdentifier: RequestConnection] = [:]
        var running = false
    }

    init(interval: Duration) {
        self.interval = interval
    }

    /// Sweeps `connection` until it is unregistered (``RequestConnection`` does so when it fails
    /// or is closed).
    func register(_ connection: RequestConnection) {
        let start = state.withLock { s in
            s.connections[ObjectIdentifier(connection)] = connection
            if s.running { return false }
            s.running = true
            return true
        }
        if start { Task.detached { await self.run() } }
    }

    func unregister(_ connection: RequestConnection) {
        _ = state.withLock { $0.connections.removeValue(forKey: ObjectIdentifier(connection)) }
    }

    /// Ends once no connection is registered (and starts again with the next one).
    private func run() async {
        while true {
            try? await Task.sleep(for: interval)
            let open: [RequestConnection]? = state.withLock { s in
                if s.connections.isEmpty {
                    s.running = false
                    return nil
                }
                return Array(s.connections.values)
            }
            guard let open else { return }
            let now = ContinuousClock.now
            for connection in open { connection.expire(now: now) }
        }
    }
}

/// The reply frames of one streamed request, in order, with a bounded buffer: while `window`
/// frames wait unread, the connection stops reading from the socket, so a slow consumer slows
/// the sender instead of filling memory.
public final class ReplyStream: Sendable {
    private let window: Int
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var frames: [Frame] = []
        var head = 0
        var finished = false
        var failure: CatenaError?
        var consumer: CheckedContinuation<Void, Never>?
        /// Resumes the connection's reads (set while the buffer is full).
        var producer: (@Sendable () -> Void)?
        /// When the consumer last made room in a full buffer.
        var resumedAt: ContinuousClock.Instant?
    }

    init(window: Int) {
        self.window = max(1, window)
    }

    deinit {
        // Dropped while full (its last frame came, so no deadline will fail it): the
        // connection must read again.
        state.withLock { $0.producer }?()
    }

    /// The next reply frame; nil after the last. An error frame is thrown as its error.
    public func next() async throws(CatenaError) -> Frame? {
        while true {
            enum Step { case frame(Frame, (@Sendable () -> Void)?), done, failed(CatenaError), wait }
            let step: Step = state.withLock { s in
                if s.head < s.frames.count {
                    let f = s.frames[s.head]
                    s.head += 1
                    if s.head == s.frames.count {
                        s.frames.removeAll(keepingCapacity: true)
                        s.head = 0
                    }
                    let producer = s.frames.count - s.head < window ? s.producer : nil
                    if producer != nil {
                        s.producer = nil
                        s.resumedAt = .now
                    }
                    return .frame(f, producer)
                }
                if let failure = s.failure { return .failed(failure) }
                return s.finished ? .done : .wait
            }
            switch step {
            case .frame(let f, let producer):
                producer?()
                if f.type == .error { throw try ErrorPayload.decode(f.payload) }
                return f
            case .done:
                return nil
            case .failed(let e):
                throw e
            case .wait:
                // A cancelled reader stops waiting: the stream fails with `closed`.
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                        let ready = state.withLock { s in
                            if s.head < s.frames.count || s.finished || s.failure != nil { return true }
                            s.consumer = c
                            return false
                        }
                        if ready { c.resume() }
                    }
                } onCancel: {
                    fail(CatenaError(.closed, "the request was cancelled"))
                }
            }
        }
    }

    /// Adds a frame (the connection's event loop calls this). Returns false when the buffer is
    /// full now: the connection stops reading until `whenSpace` is called, once the consumer
    /// made room (or the stream ended).
    func offer(_ frame: Frame, final: Bool, whenSpace: @escaping @Sendable () -> Void) -> Bool {
        let (consumer, full): (CheckedContinuation<Void, Never>?, Bool) = state.withLock { s in
            guard s.failure == nil else { return (nil, false) }
            s.frames.append(frame)
            if final { s.finished = true }
            let c = s.consumer
            s.consumer = nil
            let full = s.frames.count - s.head >= window && !final
            if full { s.producer = whenSpace }
            return (c, full)
        }
        consumer?.resume()
        return !full
    }

    /// Whether the last reply frame arrived (read or not): nothing more of this request will
    /// come over the connection.
    public var receivedAll: Bool { state.withLock { $0.finished } }

    /// The consumer is done: frames still to come are dropped as they arrive, so the connection
    /// keeps reading for its other requests.
    public func abandon() {
        let producer: (@Sendable () -> Void)? = state.withLock { s in
            if s.failure == nil { s.failure = CatenaError(.closed, "the reply stream was abandoned") }
            s.frames = []
            s.head = 0
            defer { s.producer = nil }
            return s.producer
        }
        producer?()
    }

    /// Whether the request's idle timeout ran out at `now`, the last reply frame having come by
    /// `deadline` less `timeout`. It does not run while the buffer is full and the consumer has
    /// not read (the client holds the reply up, not the server: a slow consumer of a stream is
    /// not a silent server), and starts again when the consumer makes room.
    func timedOut(deadline: ContinuousClock.Instant, timeout: Duration, now: ContinuousClock.Instant) -> Bool {
        state.withLock { s in
            if s.producer != nil { return false }
            if let resumed = s.resumedAt, resumed + timeout > now { return false }
            return deadline <= now
        }
    }

    /// Fails the stream (connection lost, deadline passed).
    func fail(_ error: CatenaError) {
        let (c, p): (CheckedContinuation<Void, Never>?, (@Sendable () -> Void)?) = state.withLock { s in
            if s.failure == nil && !s.finished { s.failure = error }
            defer { s.consumer = nil; s.producer = nil }
            return (s.consumer, s.producer)
        }
        c?.resume()
        p?()
    }
}

/// A continuation resumed once, by whichever comes first (the others are ignored); a value
/// that comes before the continuation is set is kept for it.
final class OnceResume<Value: Sendable>: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Value, Never>?, value: Value?, done: Bool)>((nil, nil, false))

    func set(_ continuation: CheckedContinuation<Value, Never>) {
        let ready: Value? = state.withLock { s in
            if let v = s.value, !s.done {
                s.done = true
                return v
            }
            if !s.done { s.continuation = continuation }
            return nil
        }
        if let ready { continuation.resume(returning: ready) }
    }

    func resume(_ value: Value) {
        let c: CheckedContinuation<Value, Never>? = state.withLock { s in
            guard !s.done else { return nil }
            guard let c = s.continuation else {
                if s.value == nil { s.value = value }
                return nil
            }
            s.done = true
            s.continuation = nil
            return c
        }
        c?.resume(returning: value)
    }
}
