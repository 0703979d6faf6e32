import CatenaCore
import NIOCore

/// Where a node stands with the master, as a heartbeat reply tells it.
public enum NodeStanding: UInt8, Hashable, Sendable, CustomStringConvertible {
    /// A member of the configuration: it serves in its role.
    case member = 1
    /// Known but not a member (added by an operator, or removed after a failure): it truncates
    /// what the chain does not share, catches up from the tail, and is appended once caught up.
    case joining = 2
    /// Neither: never added, or removed by an operator. The node stops.
    case unknown = 3

    public var description: String {
        switch self {
        case .member: "member"
        case .joining: "joining"
        case .unknown: "unknown"
        }
    }
}

/// The master's answer to a heartbeat: the active configuration, the node's standing in it, the
/// lease granted (nil: none) and the epoch history.
///
/// Layout: a ``ConfigurationPayload``, then standing (u8), lease in milliseconds (u32, 0: none),
/// history count (u32) and each entry: epoch (u64), first seq (u64, 0: unknown). Readers of a
/// plain configuration (clients) ignore what follows it.
///
/// A ``Heartbeat`` whose epoch start is nil encodes it as zeros; a first seq is never 0.
public struct HeartbeatReply: Hashable, Sendable {
    /// The active configuration.
    public var configuration: ChainConfiguration
    /// Where the node stands.
    public var standing: NodeStanding
    /// How long the node may serve from when it sent the heartbeat (nil: no lease).
    public var lease: Duration?
    /// Every epoch of the chain with its first seq where known, oldest first.
    public var history: EpochHistory

    /// Creates a reply.
    public init(configuration: ChainConfiguration, standing: NodeStanding, lease: Duration?, history: EpochHistory) {
        self.configuration = configuration
        self.standing = standing
        self.lease = lease
        self.history = history
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ConfigurationPayload.encode(configuration)
        b.writeInteger(standing.rawValue)
        let millis = lease.map { UInt32(clamping: $0.nanosecondsClamped / 1_000_000) } ?? 0
        b.writeInteger(millis, endianness: .little)
        b.writeInteger(UInt32(history.entries.count), endianness: .little)
        for e in history.entries {
            b.writeInteger(e.epoch, endianness: .little)
            b.writeInteger(e.firstSeq ?? 0, endianness: .little)
        }
        return b
    }

    /// Parses a reply.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        let configuration = try ConfigurationPayload.decode(&b)
        guard let raw = b.readInteger(as: UInt8.self), let millis = b.readInteger(endianness: .little, as: UInt32.self),
              let count = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "heartbeat reply is truncated")
        }
        guard let standing = NodeStanding(rawValue: raw) else {
            throw CatenaError(.malformed, "heartbeat reply has unknown standing \(raw)")
        }
        guard Int(count) <= b.readableBytes / 16 else {
            throw CatenaError(.malformed, "heartbeat reply claims \(count) epochs; \(b.readableBytes) bytes remain")
        }
        var entries: [EpochStart] = []
        entries.reserveCapacity(Int(count))
        for _ in 0..<count {
            let epoch = b.readInteger(endianness: .little, as: UInt64.self)!
            let first = b.readInteger(endianness: .little, as: UInt64.self)!
            entries.append(EpochStart(epoch: epoch, firstSeq: first == 0 ? nil : first))
        }
        self.init(configuration: configuration, standing: standing, lease: millis == 0 ? nil : .milliseconds(millis),
                  history: EpochHistory(entries))
    }
}

/// The payload of ``FrameType/addNode`` and ``FrameType/removeNode``: a node id and (adding) the
/// address it serves at.
///
/// Layout: node id, address (u16 length + UTF-8 each; the address may be empty).
public struct NodeRequest: Hashable, Sendable {
    /// The node.
    public var node: NodeID
    /// `host:port` (adding), or empty.
    public var address: String

    /// Creates a request.
    public init(node: NodeID, address: String = "") {
        self.node = node
        self.address = address
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeShortString(node.rawValue)
        b.writeShortString(address)
        return b
    }

    /// Parses a request.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        let node = try NodeID(try b.readShortString(what: "node id"))
        self.init(node: node, address: try b.readShortString(what: "address"))
    }
}

/// What `catena chain status` shows: the chain's epoch and, for every node the master knows
/// (members in chain order, then those joining), its role, progress, lease and health.
public struct ChainStatus: Hashable, Sendable {
    /// How a node is doing, as the master judges from heartbeats.
    public enum Health: UInt8, Hashable, Sendable, CustomStringConvertible {
        /// Heartbeating on time.
        case healthy = 1
        /// Late: no heartbeat for over half the failure timeout.
        case suspect = 2
        /// No heartbeat for longer than the failure timeout.
        case failed = 3
        /// Being removed by an operator: no more lease renewals.
        case leaving = 4
        /// Not a member yet: catching up.
        case joining = 5

        public var description: String {
            switch self {
            case .healthy: "healthy"
            case .suspect: "suspect"
            case .failed: "failed"
            case .leaving: "leaving"
            case .joining: "joining"
            }
        }
    }

    /// One node.
    public struct Node: Hashable, Sendable {
        /// The node.
        public var id: NodeID
        /// Its address.
        public var address: String
        /// Its role (nil: not a member).
        public var role: ChainRole?
        /// The highest durable LSN it reported.
        public var highestLSN: LSN
        /// Records it is behind the most advanced member.
        public var lagRecords: UInt64
        /// Milliseconds since its last heartbeat (nil: never heard from since the master started).
        public var heartbeatAgeMilliseconds: UInt64?
        /// Milliseconds of lease left (nil: none).
        public var leaseMilliseconds: UInt64?
        /// Its health.
        public var health: Health
        /// Why it is not healthy, when the master knows more than its health says (the failure
        /// it reported); nil: nothing more to say.
        public var reason: String?

        /// Creates an entry.
        public init(id: NodeID, address: String, role: ChainRole?, highestLSN: LSN, lagRecords: UInt64,
                    heartbeatAgeMilliseconds: UInt64?, leaseMilliseconds: UInt64?, health: Health, reason: String? = nil) {
            self.id = id
            self.address = address
            self.role = role
            self.highestLSN = highestLSN
            self.lagRecords = lagRecords
            self.heartbeatAgeMilliseconds = heartbeatAgeMilliseconds
            self.leaseMilliseconds = leaseMilliseconds
            self.health = health
            self.reason = reason
        }
    }

    /// The chain.
    public var chainID: ChainID
    /// The active epoch.
    public var epoch: UInt64
    /// Whether the chain can take writes and serve reads, now or once the master has replaced
    /// failed members (false: it waits for a member to come back, or for an operator).
    public var available: Bool
    /// Why the chain cannot serve and what it waits for, when it cannot; nil otherwise (or from a
    /// master older than this field).
    public var reason: String?
    /// The failure timeout and lease the master runs with, in milliseconds.
    public var failureTimeoutMilliseconds: UInt64
    /// The lease granted per heartbeat, in milliseconds.
    public var leaseMilliseconds: UInt64
    /// Members in chain order, then nodes joining.
    public var nodes: [Node]

    /// Creates a status.
    public init(chainID: ChainID, epoch: UInt64, available: Bool, failureTimeoutMilliseconds: UInt64,
                leaseMilliseconds: UInt64, nodes: [Node], reason: String? = nil) {
        self.chainID = chainID
        self.epoch = epoch
        self.available = available
        self.failureTimeoutMilliseconds = failureTimeoutMilliseconds
        self.leaseMilliseconds = leaseMilliseconds
        self.nodes = nodes
        self.reason = reason
    }

    /// The longest reason sent, in UTF-8 bytes; a longer one is cut at a character boundary.
    public static let maximumReasonBytes = 1024

    /// The payload bytes. Layout: chain (u32), epoch (u64), available (u8), timeout and lease
    /// (u64 ms each), node count (u16), then per node: id, address (u16 length + UTF-8), role
    /// (u8: 0 none, 1 single, 2 head, 3 middle, 4 tail), highest LSN (2 × u64), lag (u64),
    /// heartbeat age and lease (u64 ms, all-ones: none), health (u8); then the reasons: the
    /// chain's, and one per node in the same order (u16 length + UTF-8 each, at most
    /// ``maximumReasonBytes``; empty: none). A payload that ends after the nodes (from a master
    /// older than the reasons) has none.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(chainID, endianness: .little)
        b.writeInteger(epoch, endianness: .little)
        b.writeInteger(UInt8(available ? 1 : 0))
        b.writeInteger(failureTimeoutMilliseconds, endianness: .little)
        b.writeInteger(leaseMilliseconds, endianness: .little)
        b.writeInteger(UInt16(clamping: nodes.count), endianness: .little)
        for n in nodes.prefix(Int(UInt16.max)) {
            b.writeShortString(n.id.rawValue)
            b.writeShortString(n.address)
            b.writeInteger(Self.code(n.role))
            b.writeLSN(n.highestLSN)
            b.writeInteger(n.lagRecords, endianness: .little)
            b.writeInteger(n.heartbeatAgeMilliseconds ?? .max, endianness: .little)
            b.writeInteger(n.leaseMilliseconds ?? .max, endianness: .little)
            b.writeInteger(n.health.rawValue)
        }
        b.writeShortString(String((reason ?? "").utf8Prefix(Self.maximumReasonBytes)))
        for n in nodes.prefix(Int(UInt16.max)) {
            b.writeShortString(String((n.reason ?? "").utf8Prefix(Self.maximumReasonBytes)))
        }
        return b
    }

    /// Parses a status.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        guard let chain = b.readInteger(endianness: .little, as: UInt32.self),
              let epoch = b.readInteger(endianness: .little, as: UInt64.self),
              let available = b.readInteger(as: UInt8.self),
              let timeout = b.readInteger(endianness: .little, as: UInt64.self),
              let lease = b.readInteger(endianness: .little, as: UInt64.self),
              let count = b.readInteger(endianness: .little, as: UInt16.self) else {
            throw CatenaError(.malformed, "chain status is truncated")
        }
        var nodes: [Node] = []
        for _ in 0..<count {
            let id = try NodeID(try b.readShortString(what: "node id"))
            let address = try b.readShortString(what: "node address")
            guard let role = b.readInteger(as: UInt8.self) else { throw CatenaError(.malformed, "chain status is truncated") }
            let highest = try b.readLSN()
            guard let lag = b.readInteger(endianness: .little, as: UInt64.self),
                  let age = b.readInteger(endianness: .little, as: UInt64.self),
                  let leaseLeft = b.readInteger(endianness: .little, as: UInt64.self),
                  let rawHealth = b.readInteger(as: UInt8.self) else {
                throw CatenaError(.malformed, "chain status is truncated")
            }
            guard role <= 4, let health = Health(rawValue: rawHealth) else {
                throw CatenaError(.malformed, "chain status has an unknown role \(role) or health \(rawHealth)")
            }
            nodes.append(Node(id: id, address: address, role: Self.role(role), highestLSN: highest, lagRecords: lag,
                              heartbeatAgeMilliseconds: age == .max ? nil : age, leaseMilliseconds: leaseLeft == .max ? nil : leaseLeft,
                              health: health))
        }
        var reason: String?
        if b.readableBytes > 0 {
            reason = try b.readShortString(what: "chain status reason")
            for i in nodes.indices {
                nodes[i].reason = try b.readShortString(what: "chain status reason of \(nodes[i].id)")
            }
        }
        func some(_ s: String?) -> String? { s?.isEmpty == false ? s : nil }
        for i in nodes.indices { nodes[i].reason = some(nodes[i].reason) }
        self.init(chainID: chain, epoch: epoch, available: available != 0, failureTimeoutMilliseconds: timeout,
                  leaseMilliseconds: lease, nodes: nodes, reason: some(reason))
    }

    private static func code(_ role: ChainRole?) -> UInt8 {
        switch role {
        case nil: 0
        case .single: 1
        case .head: 2
        case .middle: 3
        case .tail: 4
        }
    }

    private static func role(_ code: UInt8) -> ChainRole? {
        [nil, .single, .head, .middle, .tail][Int(code)]
    }
}
