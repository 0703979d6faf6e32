import CatenaCore
import NIOCore

extension FrameType {
    /// Client → storage node: the node's own view of itself (empty payload). Reply:
    /// ``nodeStatus``. Any node answers, member or not, lease or not: it is how an operator
    /// looks at a node the master has lost.
    public static let getNodeStatus = FrameType(rawValue: 40)
    /// Storage node → client: a ``NodeStatus``.
    public static let nodeStatus = FrameType(rawValue: 41)
}

/// One storage node's view of itself, as `catena node status ADDRESS` prints it (like `etcdctl
/// endpoint status`): what it runs, where it stands, how far its log goes and what it holds on
/// disk. The master's `chain status` is the master's view of every node; this is the node's.
///
/// Payload: node id, build version (short strings); chain id (u32), epoch (u64); role, standing
/// (short strings, empty: none); lease left in ms (u64, `UInt64.max`: no lease); flags (u8: 1
/// reads blocked, 2 draining); durable, last accepted, acknowledged and commit-watermark LSNs
/// (2 × u64 each); failure (short string, empty: none); segments (u32), bytes on disk, sealed,
/// garbage (u64 each); uptime in ms (u64); catch-up (u8 present; then records and bytes copied
/// (u64 each) and lag in records (u64, `UInt64.max`: unknown)).
public struct NodeStatus: Hashable, Sendable {
    /// The node's id.
    public var node: String
    /// The build (`catena --version`).
    public var version: String
    /// The chain it serves.
    public var chainID: UInt32
    /// The configuration epoch it runs (0: none yet).
    public var epoch: UInt64
    /// Its role in that configuration (`head`, `middle`, `tail`, `single`); nil: not a member.
    public var role: String?
    /// Where the master last said it stands (`member`, `joining`, `unknown`); nil: not heard yet.
    public var standing: String?
    /// Lease left, in milliseconds; nil: no lease (it serves no clients).
    public var leaseMilliseconds: UInt64?
    /// Appended to the chain and still short of what was committed before: no reads yet.
    public var readsBlocked: Bool
    /// Shutting down.
    public var draining: Bool
    /// The highest durable LSN of its log.
    public var durable: LSN
    /// The last LSN it accepted into its log.
    public var lastAccepted: LSN
    /// Through which it acknowledged upstream (the head: committed).
    public var acknowledged: LSN
    /// Its persisted commit watermark.
    public var commitWatermark: LSN
    /// Why its log failed, if it did (it then takes no writes).
    public var failure: String?
    /// Segments of its log.
    public var segments: UInt32
    /// Bytes of its log on disk.
    public var diskBytes: UInt64
    /// Bytes of sealed segments (at the last garbage count).
    public var sealedBytes: UInt64
    /// Garbage in them (superseded versions, tombstones).
    public var garbageBytes: UInt64
    /// Since the process started, in milliseconds.
    public var uptimeMilliseconds: UInt64
    /// While joining: what catch-up copied so far.
    public var catchUp: CatchUp?

    /// A joining node's catch-up progress.
    public struct CatchUp: Hashable, Sendable {
        /// Records copied.
        public var records: UInt64
        /// Bytes of records copied.
        public var bytes: UInt64
        /// Records the tail had that this node lacked at the last chunk; nil: unknown.
        public var lagRecords: UInt64?

        public init(records: UInt64, bytes: UInt64, lagRecords: UInt64?) {
            self.records = records
            self.bytes = bytes
            self.lagRecords = lagRecords
        }
    }

    public init(node: String, version: String, chainID: UInt32, epoch: UInt64, role: String?, standing: String?, leaseMilliseconds: UInt64?,
                readsBlocked: Bool, draining: Bool, durable: LSN, lastAccepted: LSN, acknowledged: LSN, commitWatermark: LSN,
                failure: String?, segments: UInt32, diskBytes: UInt64, sealedBytes: UInt64, garbageBytes: UInt64,
                uptimeMilliseconds: UInt64, catchUp: CatchUp?) {
        self.node = node
        self.version = version
        self.chainID = chainID
        self.epoch = epoch
        self.role = role
        self.standing = standing
        self.leaseMilliseconds = leaseMilliseconds
        self.readsBlocked = readsBlocked
        self.draining = draining
        self.durable = durable
        self.lastAccepted = lastAccepted
        self.acknowledged = acknowledged
        self.commitWatermark = commitWatermark
        self.failure = failure
        self.segments = segments
        self.diskBytes = diskBytes
        self.sealedBytes = sealedBytes
        self.garbageBytes = garbageBytes
        self.uptimeMilliseconds = uptimeMilliseconds
        self.catchUp = catchUp
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeShortString(node)
        b.writeShortString(version)
        b.writeInteger(chainID)
        b.writeInteger(epoch)
        b.writeShortString(role ?? "")
        b.writeShortString(standing ?? "")
        b.writeInteger(leaseMilliseconds ?? .max)
        b.writeInteger(UInt8((readsBlocked ? 1 : 0) | (draining ? 2 : 0)))
        for lsn in [durable, lastAccepted, acknowledged, commitWatermark] {
            b.writeInteger(lsn.epoch)
            b.writeInteger(lsn.seq)
        }
        b.writeShortString(failure ?? "")
        b.writeInteger(segments)
        b.writeInteger(diskBytes)
        b.writeInteger(sealedBytes)
        b.writeInteger(garbageBytes)
        b.writeInteger(uptimeMilliseconds)
        if let catchUp {
            b.writeInteger(UInt8(1))
            b.writeInteger(catchUp.records)
            b.writeInteger(catchUp.bytes)
            b.writeInteger(catchUp.lagRecords ?? .max)
        } else {
            b.writeInteger(UInt8(0))
        }
        return b
    }

    /// Parses a status; throws `malformed` on a short or inconsistent payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        func integer<T: FixedWidthInteger>(_ what: String, as: T.Type = T.self) throws(CatenaError) -> T {
            guard let v = b.readInteger(as: T.self) else { throw CatenaError(.malformed, "node status: truncated at \(what)") }
            return v
        }
        func lsn(_ what: String) throws(CatenaError) -> LSN { LSN(epoch: try integer(what), seq: try integer(what)) }
        func optional(_ s: String) -> String? { s.isEmpty ? nil : s }
        node = try b.readShortString(what: "node id")
        version = try b.readShortString(what: "version")
        chainID = try integer("chain id")
        epoch = try integer("epoch")
        role = optional(try b.readShortString(what: "role"))
        standing = optional(try b.readShortString(what: "standing"))
        let lease: UInt64 = try integer("lease")
        leaseMilliseconds = lease == .max ? nil : lease
        let flags: UInt8 = try integer("flags")
        readsBlocked = flags & 1 != 0
        draining = flags & 2 != 0
        durable = try lsn("durable LSN")
        lastAccepted = try lsn("last accepted LSN")
        acknowledged = try lsn("acknowledged LSN")
        commitWatermark = try lsn("commit watermark")
        failure = optional(try b.readShortString(what: "failure"))
        segments = try integer("segments")
        diskBytes = try integer("disk bytes")
        sealedBytes = try integer("sealed bytes")
        garbageBytes = try integer("garbage bytes")
        uptimeMilliseconds = try integer("uptime")
        let hasCatchUp: UInt8 = try integer("catch-up flag")
        if hasCatchUp == 1 {
            let records: UInt64 = try integer("catch-up records"), bytes: UInt64 = try integer("catch-up bytes"), lag: UInt64 = try integer("catch-up lag")
            catchUp = CatchUp(records: records, bytes: bytes, lagRecords: lag == .max ? nil : lag)
        } else {
            guard hasCatchUp == 0 else { throw CatenaError(.malformed, "node status: catch-up flag \(hasCatchUp)") }
            catchUp = nil
        }
        // Fields a newer node appends are skipped, not refused.
    }
}
