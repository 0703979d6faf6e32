import CatenaCore
import Synchronization

/// The rules by which a server admits the bytes of its client connections' request frames, as a
/// pure state machine: events (a frame wants in, bytes are released, a connection closes) in,
/// the connections to wake out. No locks, no I/O; ``RequestBudget`` holds it under a lock, and
/// `InboundGate` applies its answers to sockets.
///
/// A frame is *admitted* — its bytes may be read off the socket — when both hold:
/// - its connection holds at most ``Limits/perConnection`` bytes with it (or holds nothing: a
///   frame larger than the limit is admitted alone);
/// - the bytes its connection holds beyond its first ``Limits/allowance`` — the part charged to
///   the server — keep the server at most ``Limits/perServer`` (or the server holds nothing),
///   and no connection waits for server bytes ahead of it (first come, first served).
///
/// So a connection's first `allowance` bytes never wait for other connections: a client's pings,
/// reads and small writes are admitted while others' large writes fill the server's budget. A
/// frame not admitted is not read: its connection's reads stop (TCP backpressure) until bytes
/// are released. Bytes are held from admission until the request they carry is answered.
///
/// Memory held for requests is then at most `perServer` plus `allowance` per connection (plus
/// one oversized frame when the server held nothing).
public struct RequestAdmissionState: Sendable {
    /// The bounds.
    public struct Limits: Hashable, Sendable {
        /// Bytes one connection may hold.
        public var perConnection: Int
        /// Bytes the server's connections may hold beyond their allowances.
        public var perServer: Int
        /// Bytes each connection holds outside the server's budget.
        public var allowance: Int

        /// Creates limits.
        public init(perConnection: Int, perServer: Int, allowance: Int) {
            self.perConnection = perConnection
            self.perServer = perServer
            self.allowance = allowance
        }
    }

    /// What ``admit(_:bytes:)`` decided.
    public enum Decision: Hashable, Sendable {
        /// The frame's bytes are charged: read it.
        case admitted
        /// Not yet: stop reading this connection until it is woken.
        case waiting
    }

    struct Connection {
        /// Bytes admitted and not yet released.
        var held = 0
        /// Of those, bytes of frames handed to the request handler (released when answered).
        var delivered = 0
        /// The frame waiting to be admitted, if any.
        var waiting: Int?
        /// The waiting frame was admitted while its connection waited: the next ``admit`` says so.
        var granted = false
        /// Closed: only delivered bytes remain, released as their requests end.
        var closed = false
    }

    /// The bounds.
    public let limits: Limits
    private(set) var connections: [UInt64: Connection] = [:]
    /// Connections waiting for server bytes, first come first.
    private(set) var queue: [UInt64] = []
    /// Bytes held by every connection.
    public private(set) var heldBytes = 0
    /// The most ``heldBytes`` so far.
    public private(set) var peakHeldBytes = 0
    /// Bytes charged to the server's budget (held beyond the allowances).
    public private(set) var serverBytes = 0
    /// The most ``serverBytes`` so far.
    public private(set) var peakServerBytes = 0
    /// Frames that had to wait before they were admitted.
    public private(set) var waits = 0

    /// Creates the state of a server with no connections.
    public init(limits: Limits) {
        self.limits = limits
    }

    /// Connections with a frame waiting to be admitted.
    public var waitingConnections: Int { connections.values.filter { $0.waiting != nil }.count }

    /// Bytes connection `id` holds (0 for an unknown one).
    public func held(by id: UInt64) -> Int { connections[id]?.held ?? 0 }

    /// A new connection.
    public mutating func open(_ id: UInt64) {
        connections[id] = Connection()
    }

    /// A frame of `bytes` wants to be read on connection `id`. While it waits, asking again for
    /// the same frame answers `waiting` until the connection was woken, then `admitted`.
    public mutating func admit(_ id: UInt64, bytes: Int) -> Decision {
        guard var c = connections[id], !c.closed else { return .admitted }
        if c.granted {
            c.granted = false
            c.waiting = nil
            connections[id] = c
            return .admitted
        }
        if c.waiting != nil { return .waiting }
        if fitsConnection(c, bytes) && fitsServer(c, bytes, first: queue.isEmpty) {
            charge(id, bytes)
            return .admitted
        }
        c.waiting = bytes
        connections[id] = c
        waits += 1
        // Waiting for its own requests first; for the server once those leave it room.
        if fitsConnection(c, bytes) { queue.append(id) }
        return .waiting
    }

    /// Connection `id` handed a frame of `bytes` to its request handler, which releases it with
    /// ``release(_:bytes:delivered:)`` when it is answered.
    public mutating func deliver(_ id: UInt64, bytes: Int) {
        guard var c = connections[id] else { return }
        c.delivered = min(c.held, c.delivered + bytes)
        connections[id] = c
    }

    /// Connection `id` is done with `bytes` (`delivered`: of a frame handed to its handler).
    /// Returns the connections whose waiting frames were admitted: wake them.
    public mutating func release(_ id: UInt64, bytes: Int, delivered: Bool) -> [UInt64] {
        guard var c = connections[id] else { return [] }
        let r = min(bytes, c.held)
        if delivered { c.delivered = max(0, c.delivered - bytes) }
        let serverPart = max(0, c.held - limits.allowance) - max(0, c.held - r - limits.allowance)
        c.held -= r
        serverBytes -= serverPart
        heldBytes -= r
        if c.closed && c.held == 0 {
            connections[id] = nil
        } else {
            connections[id] = c
        }
        return wakeWaiters(after: id)
    }

    /// Connection `id` closed: the bytes of frames it never handed to its handler are released at
    /// once (the socket's buffers are gone); delivered ones when their requests end.
    public mutating func close(_ id: UInt64) -> [UInt64] {
        guard var c = connections[id], !c.closed else { return [] }
        queue.removeAll { $0 == id }
        c.closed = true
        c.waiting = nil
        c.granted = false
        connections[id] = c
        return release(id, bytes: c.held - c.delivered, delivered: false)
    }

    // MARK: - Rules

    private func fitsConnection(_ c: Connection, _ bytes: Int) -> Bool {
        c.held == 0 || c.held + bytes <= limits.perConnection
    }

    /// The bytes of a frame charged to the server: what takes its connection past its allowance.
    private func serverCharge(_ c: Connection, _ bytes: Int) -> Int {
        max(0, c.held + bytes - limits.allowance) - max(0, c.held - limits.allowance)
    }

    private func fitsServer(_ c: Connection, _ bytes: Int, first: Bool) -> Bool {
        let charge = serverCharge(c, bytes)
        return charge == 0 || first && (serverBytes == 0 || serverBytes + charge <= limits.perServer)
    }

    private mutating func charge(_ id: UInt64, _ bytes: Int) {
        guard var c = connections[id] else { return }
        serverBytes += serverCharge(c, bytes)
        c.held += bytes
        heldBytes += bytes
        connections[id] = c
        peakHeldBytes = max(peakHeldBytes, heldBytes)
        peakServerBytes = max(peakServerBytes, serverBytes)
    }

    private mutating func grant(_ id: UInt64) {
        guard let bytes = connections[id]?.waiting else { return }
        charge(id, bytes)
        connections[id]!.granted = true
    }

    /// After `id` released bytes: its own waiting frame, then the server's queue in order.
    private mutating func wakeWaiters(after id: UInt64) -> [UInt64] {
        var woken: [UInt64] = []
        if let c = connections[id], let bytes = c.waiting, !c.granted, !queue.contains(id), fitsConnection(c, bytes) {
            if fitsServer(c, bytes, first: queue.isEmpty) {
                grant(id)
                woken.append(id)
            } else {
                queue.append(id)
            }
        }
        while let first = queue.first, let c = connections[first], let bytes = c.waiting {
            guard fitsServer(c, bytes, first: true) else { break }
            queue.removeFirst()
            grant(first)
            woken.append(first)
        }
        return woken
    }
}

/// Counters and gauges of a server's request admission (see ``RequestAdmissionState``).
public struct RequestAdmissionMetrics: Hashable, Sendable {
    /// Bytes of request frames admitted and not yet answered, over all connections.
    public var bytesInProgress = 0
    /// The most ``bytesInProgress`` so far.
    public var peakBytesInProgress = 0
    /// Of those, bytes charged to the server's budget (beyond each connection's allowance).
    public var serverBytesInProgress = 0
    /// The most ``serverBytesInProgress`` so far.
    public var peakServerBytesInProgress = 0
    /// Connections whose reading is stopped until bytes are released.
    public var waitingConnections = 0
    /// Frames that waited before they were admitted.
    public var waits = 0
}

/// A server's ``RequestAdmissionState`` under a lock, with a way to wake each waiting connection.
final class RequestBudget: Sendable {
    private struct Locked: ~Copyable {
        var state: RequestAdmissionState
        var wakers: [UInt64: @Sendable () -> Void] = [:]
        var nextID: UInt64 = 1
    }

    private let locked: Mutex<Locked>

    init(limits: RequestAdmissionState.Limits) {
        locked = Mutex(Locked(state: RequestAdmissionState(limits: limits)))
    }

    /// A handle for a new connection.
    func connection() -> ConnectionAdmission {
        let id = locked.withLock { l in
            defer { l.nextID += 1 }
            l.state.open(l.nextID)
            return l.nextID
        }
        return ConnectionAdmission(id: id, budget: self)
    }

    var metrics: RequestAdmissionMetrics {
        locked.withLock { l in
            RequestAdmissionMetrics(bytesInProgress: l.state.heldBytes, peakBytesInProgress: l.state.peakHeldBytes,
                                    serverBytesInProgress: l.state.serverBytes, peakServerBytesInProgress: l.state.peakServerBytes,
                                    waitingConnections: l.state.waitingConnections, waits: l.state.waits)
        }
    }

    func setWaker(_ id: UInt64, _ waker: @escaping @Sendable () -> Void) {
        locked.withLock { $0.wakers[id] = waker }
    }

    func wake(_ id: UInt64) {
        wake(locked.withLock { l in Self.wakers([id], l.wakers) })
    }

    func admit(_ id: UInt64, bytes: Int) -> RequestAdmissionState.Decision {
        locked.withLock { $0.state.admit(id, bytes: bytes) }
    }

    func deliver(_ id: UInt64, bytes: Int) {
        locked.withLock { $0.state.deliver(id, bytes: bytes) }
    }

    func release(_ id: UInt64, bytes: Int, delivered: Bool) {
        wake(locked.withLock { l in Self.wakers(l.state.release(id, bytes: bytes, delivered: delivered), l.wakers) })
    }

    func close(_ id: UInt64) {
        wake(locked.withLock { l in
            let woken = Self.wakers(l.state.close(id), l.wakers)
            l.wakers[id] = nil
            return woken
        })
    }

    private static func wakers(_ ids: [UInt64], _ all: [UInt64: @Sendable () -> Void]) -> [@Sendable () -> Void] {
        ids.compactMap { all[$0] }
    }

    /// Outside the lock: a waker hops to its connection's event loop.
    private func wake(_ wakers: [@Sendable () -> Void]) {
        for w in wakers { w() }
    }
}

/// One accepted connection's part in its server's ``RequestBudget``: whether its frames are
/// metered, and the calls that admit, deliver and release them.
public final class ConnectionAdmission: Sendable {
    /// How a connection's frames are admitted.
    enum Mode: UInt8 {
        /// The handshake is not done: nothing after the hello is read.
        case handshake = 0
        /// A client: every frame is admitted by the budget.
        case metered = 1
        /// A peer (node, master): frames are read as they come; the peer's own protocol bounds them.
        case unmetered = 2
    }

    let id: UInt64
    private let budget: RequestBudget
    private let modeValue = Atomic<UInt8>(Mode.handshake.rawValue)

    init(id: UInt64, budget: RequestBudget) {
        self.id = id
        self.budget = budget
    }

    var mode: Mode { Mode(rawValue: modeValue.load(ordering: .acquiring)) ?? .unmetered }

    /// Ends the handshake: from now on frames are metered or not; the gate resumes reading.
    func setMode(_ mode: Mode) {
        modeValue.store(mode.rawValue, ordering: .releasing)
        budget.wake(id)
    }

    func setWaker(_ waker: @escaping @Sendable () -> Void) { budget.setWaker(id, waker) }
    func admit(bytes: Int) -> RequestAdmissionState.Decision { budget.admit(id, bytes: bytes) }
    func deliver(bytes: Int) { budget.deliver(id, bytes: bytes) }
    func release(bytes: Int, delivered: Bool) { budget.release(id, bytes: bytes, delivered: delivered) }
    func close() { budget.close(id) }
}
