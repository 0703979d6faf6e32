/// A storage node's id: 1 to 64 characters of `[A-Za-z0-9._-]`, compared byte-wise.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The id's text.
    public let rawValue: String

    /// Creates an id, checking its form.
    public init(_ rawValue: String) throws(CatenaError) {
        guard NodeID.isValidIdentifier(rawValue) else {
            throw CatenaError(.invalidArgument, "node id '\(rawValue)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        self.rawValue = rawValue
    }

    /// Whether `s` is 1 to 64 characters of `[A-Za-z0-9._-]`: the form of node and cluster ids.
    public static func isValidIdentifier(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
    }

    /// Byte-wise order of the ids' UTF-8.
    public static func < (lhs: NodeID, rhs: NodeID) -> Bool { lhs.rawValue.utf8.lexicographicallyPrecedes(rhs.rawValue.utf8) }
    /// Byte-wise equality of the ids' UTF-8 (not Unicode-canonical).
    public static func == (lhs: NodeID, rhs: NodeID) -> Bool { lhs.rawValue.utf8.elementsEqual(rhs.rawValue.utf8) }
    /// Hashes the id's UTF-8 bytes, as `==` compares them.
    public func hash(into hasher: inout Hasher) { hasher.combine(Array(rawValue.utf8)) }
    /// The id.
    public var description: String { rawValue }
}

/// A member of a chain: its id and the address peers reach it at.
public struct ChainMember: Hashable, Sendable {
    /// The node.
    public var id: NodeID
    /// `host:port` its peers and clients connect to.
    public var address: String

    /// Creates a member.
    public init(id: NodeID, address: String) {
        self.id = id
        self.address = address
    }
}

/// What a node is in a chain.
public enum ChainRole: Hashable, Sendable {
    /// The only member: head and tail at once.
    case single
    /// First of several: takes writes, assigns LSNs.
    case head
    /// Between head and tail: applies and forwards.
    case middle
    /// Last of several: applies, acknowledges, answers reads.
    case tail

    /// Whether writes enter here.
    public var takesWrites: Bool { self == .single || self == .head }
    /// Whether this member's newest durable versions are all committed, so it answers every
    /// read from what it holds (the tail, or the single member). Other members answer reads
    /// too (``ReadMode/linearizable``), asking the tail about keys with writes in flight.
    public var answersReads: Bool { self == .single || self == .tail }
}

/// One chain's configuration: its epoch and members in order, head first. Every change bumps
/// the epoch; nodes refuse messages from older epochs (fencing).
public struct ChainConfiguration: Hashable, Sendable {
    /// The cluster.
    public var clusterID: String
    /// The chain.
    public var chainID: ChainID
    /// The configuration's epoch.
    public var epoch: UInt64
    /// Members in chain order, head first.
    public var members: [ChainMember]

    /// Creates a configuration; members must be distinct.
    public init(clusterID: String, chainID: ChainID, epoch: UInt64, members: [ChainMember]) throws(CatenaError) {
        guard Set(members.map(\.id)).count == members.count else {
            throw CatenaError(.invalidArgument, "chain \(chainID) lists a member twice")
        }
        self.clusterID = clusterID
        self.chainID = chainID
        self.epoch = epoch
        self.members = members
    }

    /// The head, if the chain has members.
    public var head: ChainMember? { members.first }
    /// The tail, if the chain has members.
    public var tail: ChainMember? { members.last }

    /// `id`'s role, or nil if it is not a member.
    public func role(of id: NodeID) -> ChainRole? {
        guard let i = members.firstIndex(where: { $0.id == id }) else { return nil }
        if members.count == 1 { return .single }
        if i == 0 { return .head }
        return i == members.count - 1 ? .tail : .middle
    }

    /// The member after `id`, if any.
    public func successor(of id: NodeID) -> ChainMember? {
        guard let i = members.firstIndex(where: { $0.id == id }), i + 1 < members.count else { return nil }
        return members[i + 1]
    }

    /// The member before `id`, if any.
    public func predecessor(of id: NodeID) -> ChainMember? {
        guard let i = members.firstIndex(where: { $0.id == id }), i > 0 else { return nil }
        return members[i - 1]
    }
}
