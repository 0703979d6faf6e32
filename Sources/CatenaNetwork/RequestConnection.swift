import CatenaCore
import CatenaWire
import NIOCore
import NIOPosix
import Synchronization

/// One client-side connection carrying many concurrent requests, each paired with its replies
/// by the frame's request id. Replies may be one frame or a stream (frames flagged `more`, then
/// a last one). Each request has a deadline; when the connection fails every open request fails
/// with `unavailable` and later requests fail at once (the owner reconnects).
public final class RequestConnection: Sendable {
    /// The peer.
    public let address: Address
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var outbound: NIOAsyncChannelOutboundWriter<Frame>?
        var outlet: FrameOutlet?
        var welcome: Welcome?
        var nextID: UInt64 = 1
        var waiters: [UInt64: Waiter] = [:]
        var failure: CatenaError?
        var tasks: [Task<Void, Never>] = []
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

    /// Connects and completes the handshake (see ``FrameConnector/withConnection(to:hello:limits:group:_:)``).
    public static func connect(to address: Address, hello: Hello, limits: ConnectionLimits = ConnectionLimits(),
                               group: any EventLoopGroup = FrameConnector.defaultGroup) async throws(CatenaError) -> RequestConnection {
        let connection = RequestConnection(address: address)
        // The read loop runs on the connection's event loop: a reply reaches it without a thread
        // hand-over (only the caller waiting for it is woken).
        let loop = group.next()
        let ready: Result<Void, CatenaError> = await withCheckedContinuation { continuation in
            let once = TakeOnce(continuation)
            let task = Task(executorPreference: EventLoopTaskExecutor(loop)) {
                let outcome = await Result.catching { () async throws(CatenaError) -> Void in
                    try await FrameConnector.withConnection(to: address, hello: hello, limits: limits, group: loop) { (welcome, reader, outbound, outlet) async throws(CatenaError) -> Void in
                        connection.state.withLock {
                            $0.outbound = outbound
                            $0.outlet = outlet
                            $0.welcome = welcome
                        }
                        once.take()?.resume(returning: .success(()))
                        await connection.readLoop(&reader)
                    }
                }
                let error: CatenaError
                switch outcome {
                case .success: error = CatenaError(.unavailable, "connection to \(address) closed")
                case .failure(let e): error = e
                }
                connection.fail(error)
                once.take()?.resume(returning: .failure(error))
            }
            RequestSweeper.shared.register(connection)
            // If the connection already failed, `fail` found no task to cancel: cancel it here.
            let failed = connection.state.withLock { s in
                s.tasks = [task]
                return s.failure != nil
            }
            if failed {
                task.cancel()
                RequestSweeper.shared.unregister(connection)
            }
        }
        try ready.get()
        return connection
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
        let outbound: NIOAsyncChannelOutboundWriter<Frame>? = try state.withLock { (s) throws(CatenaError) in
            if let failure = s.failure { throw failure }
            guard let outbound = s.outbound, let outlet = s.outlet else {
                throw CatenaError(.unavailable, "connection to \(address) is not established")
            }
            frame.requestID = s.nextID
            s.nextID += 1
            s.waiters[frame.requestID] = Waiter(stream: stream, timeout: timeout, deadline: .now + timeout)
            guard small else { return outbound }
            // Under the lock, so requests leave in the order of their ids.
            outlet.send(frame)
            return nil
        }
        if let outbound { await send(frame, on: outbound) }
        return stream
    }

    /// Requests up to this payload go out through the connection's ``FrameOutlet`` (no task
    /// hop; those sent together share a flush); larger ones through the outbound writer, which
    /// waits while the socket is full, so a large upload is not buffered whole.
    static let smallFrame = 64 << 10

    /// Closes the connection; open requests fail with `closed`.
    public func close() {
        fail(CatenaError(.closed, "connection to \(address) was closed"))
    }

    private func send(_ frame: Frame, on outbound: NIOAsyncChannelOutboundWriter<Frame>) async {
        do {
            try await outbound.write(frame)
        } catch {
            fail(CatenaError(.unavailable, "cannot send to \(address): \(error)"))
        }
    }

    private func readLoop(_ reader: inout FrameReader) async {
        while true {
            let frame: Frame?
            do {
                frame = try await reader.next()
            } catch {
                fail(error.code == .unavailable ? error : CatenaError(.unavailable, "\(address) sent a bad frame: \(error)"))
                return
            }
            guard let frame else { return }
            let final = !frame.flags.contains(.more) || frame.type == .error
            let waiter: Waiter? = state.withLock { s in
                final ? s.waiters.removeValue(forKey: frame.requestID) : s.waiters[frame.requestID]
            }
            switch waiter {
            case .some(let w):
                await w.stream.push(frame, final: final)
                if !final {
                    state.withLock { s in s.waiters[frame.requestID]?.deadline = .now + w.timeout }
                }
            case nil:
                // A connection-level error (request id 0) ends the connection.
                if frame.type == .error && frame.requestID == 0 {
                    fail((try? ErrorPayload.decode(frame.payload)) ?? CatenaError(.unavailable, "\(address) closed the connection"))
                    return
                }
            }
        }
    }

    /// Fails requests whose deadline passed.
    fileprivate func expire(now: ContinuousClock.Instant) {
        let expired: [Waiter] = state.withLock { s in
            let ids = s.waiters.compactMap { id, w in w.deadline <= now ? id : nil }
            return ids.compactMap { s.waiters.removeValue(forKey: $0) }
        }
        let error = CatenaError(.timeout, "no answer from \(address) in time")
        for w in expired { w.stream.fail(error) }
    }

    private func fail(_ error: CatenaError) {
        let (waiters, tasks): ([Waiter], [Task<Void, Never>]) = state.withLock { s in
            if s.failure == nil { s.failure = error }
            let w = Array(s.waiters.values)
            s.waiters = [:]
            s.outbound = nil
            s.outlet = nil
            let t = s.tasks
            s.tasks = []
            return (w, t)
        }
        for w in waiters { w.stream.fail(error) }
        for t in tasks { t.cancel() }
        RequestSweeper.shared.unregister(self)
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
        var producer: CheckedContinuation<Void, Never>?
    }

    init(window: Int) {
        self.window = max(1, window)
    }

    /// The next reply frame; nil after the last. An error frame is thrown as its error.
    public func next() async throws(CatenaError) -> Frame? {
        while true {
            enum Step { case frame(Frame, CheckedContinuation<Void, Never>?), done, failed(CatenaError), wait }
            let step: Step = state.withLock { s in
                if s.head < s.frames.count {
                    let f = s.frames[s.head]
                    s.head += 1
                    if s.head == s.frames.count {
                        s.frames.removeAll(keepingCapacity: true)
                        s.head = 0
                    }
                    let producer = s.frames.count - s.head < window ? s.producer : nil
                    if producer != nil { s.producer = nil }
                    return .frame(f, producer)
                }
                if let failure = s.failure { return .failed(failure) }
                return s.finished ? .done : .wait
            }
            switch step {
            case .frame(let f, let producer):
                producer?.resume()
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

    /// Adds a frame; waits while the buffer is full.
    func push(_ frame: Frame, final: Bool) async {
        let (consumer, full): (CheckedContinuation<Void, Never>?, Bool) = state.withLock { s in
            guard s.failure == nil else { return (nil, false) }
            s.frames.append(frame)
            if final { s.finished = true }
            let c = s.consumer
            s.consumer = nil
            return (c, s.frames.count - s.head >= window && !final)
        }
        consumer?.resume()
        if full {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s in
                    if s.frames.count - s.head < window || s.failure != nil { return true }
                    s.producer = c
                    return false
                }
                if ready { c.resume() }
            }
        }
    }

    /// The consumer is done: frames still to come are dropped as they arrive, so the connection
    /// keeps reading for its other requests.
    public func abandon() {
        let producer: CheckedContinuation<Void, Never>? = state.withLock { s in
            if s.failure == nil { s.failure = CatenaError(.closed, "the reply stream was abandoned") }
            s.frames = []
            s.head = 0
            defer { s.producer = nil }
            return s.producer
        }
        producer?.resume()
    }

    /// Fails the stream (connection lost, deadline passed).
    func fail(_ error: CatenaError) {
        let (c, p): (CheckedContinuation<Void, Never>?, CheckedContinuation<Void, Never>?) = state.withLock { s in
            if s.failure == nil && !s.finished { s.failure = error }
            defer { s.consumer = nil; s.producer = nil }
            return (s.consumer, s.producer)
        }
        c?.resume()
        p?.resume()
    }
}

/// A value that can be taken once, from any task.
final class TakeOnce<Value: Sendable>: Sendable {
    private let value: Mutex<Value?>

    init(_ value: Value) {
        self.value = Mutex(value)
    }

    /// The value the first time; nil afterwards.
    func take() -> Value? {
        value.withLock { v in
            defer { v = nil }
            return v
        }
    }
}
