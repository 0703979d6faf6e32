import CatenaCore
import NIOCore

/// Who opens a connection.
public struct PeerRole: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A client library or the `catena` CLI.
    public static let client = PeerRole(rawValue: 1)
    /// A storage node (replication, catch-up).
    public static let node = PeerRole(rawValue: 2)
    /// The master.
    public static let master = PeerRole(rawValue: 3)

    public var description: String {
        switch self {
        case .client: "client"
        case .node: "node"
        case .master: "master"
        default: "role(\(rawValue))"
        }
    }
}

/// The protocol versions this build speaks.
public enum ProtocolVersion {
    /// The oldest version this build accepts.
    public static let minimum: UInt16 = 1
    /// The newest version this build speaks.
    public static let current: UInt16 = 1
}

/// The payload of a ``FrameType/hello`` frame, the first frame of every connection.
///
/// Layout: min version (u16), max version (u16), role (u8), cluster id and sender id (each u16
/// length + UTF-8), then tagged fields in the record extension format (later additions).
public struct Hello: Hashable, Sendable {
    /// The versions the sender speaks.
    public var versions: ClosedRange<UInt16>
    /// The sender's role.
    public var role: PeerRole
    /// The cluster the sender belongs to; a mismatch is refused (ports get reused).
    public var clusterID: String
    /// The sender's node id, or a client's name.
    public var senderID: String
    /// Tagged fields from later versions.
    public var extensions: [RecordExtension]

    /// Creates a hello.
    public init(versions: ClosedRange<UInt16> = ProtocolVersion.minimum...ProtocolVersion.current, role: PeerRole,
                clusterID: String, senderID: String, extensions: [RecordExtension] = []) {
        self.versions = versions
        self.role = role
        self.clusterID = clusterID
        self.senderID = senderID
        self.extensions = extensions
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(versions.lowerBound, endianness: .little)
        b.writeInteger(versions.upperBound, endianness: .little)
        b.writeInteger(role.rawValue)
        b.writeShortString(clusterID)
        b.writeShortString(senderID)
        b.writeBytes(EncodedRecord.encodeExtensions(extensions))
        return b
    }

    /// Parses a hello payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        guard let low = b.readInteger(endianness: .little, as: UInt16.self),
              let high = b.readInteger(endianness: .little, as: UInt16.self),
              let role = b.readInteger(as: UInt8.self) else {
            throw CatenaError(.malformed, "hello is truncated")
        }
        guard low <= high else { throw CatenaError(.malformed, "hello versions \(low)...\(high) are reversed") }
        let cluster = try b.readShortString(what: "cluster id")
        let sender = try b.readShortString(what: "sender id")
        let exts = try parseHandshakeExtensions(&b, in: "hello")
        self.init(versions: low...high, role: PeerRole(rawValue: role), clusterID: cluster, senderID: sender, extensions: exts)
    }
}

/// The payload of a ``FrameType/welcome`` frame: the accepted handshake.
///
/// Layout: chosen version (u16), the responder's cluster id and id (u16 length + UTF-8 each),
/// tagged fields.
public struct Welcome: Hashable, Sendable {
    /// The version both sides speak from now on.
    public var version: UInt16
    /// The responder's cluster.
    public var clusterID: String
    /// The responder's id.
    public var responderID: String
    /// Tagged fields from later versions.
    public var extensions: [RecordExtension]

    /// Creates a welcome.
    public init(version: UInt16, clusterID: String, responderID: String, extensions: [RecordExtension] = []) {
        self.version = version
        self.clusterID = clusterID
        self.responderID = responderID
        self.extensions = extensions
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(version, endianness: .little)
        b.writeShortString(clusterID)
        b.writeShortString(responderID)
        b.writeBytes(EncodedRecord.encodeExtensions(extensions))
        return b
    }

    /// Parses a welcome payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        guard let version = b.readInteger(endianness: .little, as: UInt16.self) else {
            throw CatenaError(.malformed, "welcome is truncated")
        }
        let cluster = try b.readShortString(what: "cluster id")
        let responder = try b.readShortString(what: "responder id")
        let exts = try parseHandshakeExtensions(&b, in: "welcome")
        self.init(version: version, clusterID: cluster, responderID: responder, extensions: exts)
    }
}

/// The payload of a ``FrameType/error`` frame: a ``CatenaError`` on the wire.
///
/// Layout: code name (u16 length + UTF-8), message (u32 length + UTF-8). Codes travel by name,
/// so a newer peer's codes reach an older one intact.
public enum ErrorPayload {
    /// The payload bytes for `error`.
    public static func encode(_ error: CatenaError) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeShortString(error.code.description)
        let message = Array(error.message.utf8.prefix(64 << 10))
        b.writeInteger(UInt32(message.count), endianness: .little)
        b.writeBytes(message)
        return b
    }

    /// The error an error frame carries.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> CatenaError {
        var b = payload
        let code = try b.readShortString(what: "error code")
        guard let n = b.readInteger(endianness: .little, as: UInt32.self), let bytes = b.readBytes(length: Int(n)) else {
            throw CatenaError(.malformed, "error frame is truncated")
        }
        return CatenaError(.named(code), String(decoding: bytes, as: UTF8.self))
    }
}

/// What the accepting side of a connection does with its first frames: a pure state machine
/// (no I/O), driven by one interpreter in the connection handler.
public struct HandshakeStateMachine: Sendable {
    /// What to do next.
    public enum Action: Hashable, Sendable {
        /// Send `reply` (a welcome); the connection now speaks `version` with `peer`.
        case accept(reply: Frame, version: UInt16, peer: Hello)
        /// Send `reply` (an error frame) and close the connection.
        case reject(reply: Frame, error: CatenaError)
        /// Hand the frame to the protocol layer.
        case deliver(Frame)
    }

    private enum State: Sendable {
        case awaitingHello
        case established(version: UInt16)
        case closed
    }

    private var state: State = .awaitingHello
    private let clusterID: String
    private let localID: String
    private let acceptedRoles: Set<PeerRole>
    private let versions: ClosedRange<UInt16>
    private let allowsClusterDiscovery: Bool

    /// Creates the machine for a server in cluster `clusterID` known as `localID`. With
    /// `allowsClusterDiscovery`, a client may say hello with an empty cluster id and learn it
    /// from the welcome.
    public init(clusterID: String, localID: String, acceptedRoles: Set<PeerRole>,
                versions: ClosedRange<UInt16> = ProtocolVersion.minimum...ProtocolVersion.current,
                allowsClusterDiscovery: Bool = false) {
        self.allowsClusterDiscovery = allowsClusterDiscovery
        self.clusterID = clusterID
        self.localID = localID
        self.acceptedRoles = acceptedRoles
        self.versions = versions
    }

    /// The negotiated version, once established.
    public var version: UInt16? {
        if case .established(let v) = state { return v }
        return nil
    }

    /// A frame arrived.
    public mutating func received(_ frame: Frame) -> Action {
        switch state {
        case .established:
            if frame.type == .hello {
                return reject(frame, CatenaError(.protocolViolation, "a second hello on an established connection"))
            }
            return .deliver(frame)
        case .closed:
            return reject(frame, CatenaError(.protocolViolation, "frame after the connection was refused"))
        case .awaitingHello:
            guard frame.type == .hello else {
                return reject(frame, CatenaError(.protocolViolation, "the first frame must be hello, not \(frame.type)"))
            }
            let hello: Hello
            do {
                hello = try Hello(decoding: frame.payload)
            } catch {
                return reject(frame, error)
            }
            // A client that does not know the cluster yet (empty id) may ask a server that allows
            // discovery (the master); the welcome tells it, and it uses it from then on.
            let discovering = hello.clusterID.isEmpty && hello.role == .client && allowsClusterDiscovery
            guard discovering || hello.clusterID.utf8.elementsEqual(clusterID.utf8) else {
                return reject(frame, CatenaError(.wrongCluster, "this is cluster '\(clusterID)', not '\(hello.clusterID)'"))
            }
            guard acceptedRoles.contains(hello.role) else {
                return reject(frame, CatenaError(.protocolViolation, "a \(hello.role) may not connect here"))
            }
            let lowest = max(versions.lowerBound, hello.versions.lowerBound)
            let highest = min(versions.upperBound, hello.versions.upperBound)
            guard lowest <= highest else {
                return reject(frame, CatenaError(.protocolVersionUnsupported,
                    "peer speaks \(hello.versions.lowerBound)...\(hello.versions.upperBound), this node \(versions.lowerBound)...\(versions.upperBound)"))
            }
            let version = highest
            state = .established(version: version)
            let welcome = Welcome(version: version, clusterID: clusterID, responderID: localID)
            return .accept(
                reply: Frame(type: .welcome, flags: .reply, requestID: frame.requestID, payload: welcome.encoded()),
                version: version, peer: hello)
        }
    }

    /// The frame decoder failed (garbage, oversized, bad checksum): reply if possible, then close.
    public mutating func decodingFailed(_ error: CatenaError) -> Action {
        state = .closed
        return .reject(reply: Frame(type: .error, flags: .reply, payload: ErrorPayload.encode(error)), error: error)
    }

    private mutating func reject(_ frame: Frame, _ error: CatenaError) -> Action {
        state = .closed
        return .reject(reply: Frame(type: .error, flags: .reply, requestID: frame.requestID, payload: ErrorPayload.encode(error)), error: error)
    }
}

/// The tagged fields of a hello or welcome. No handshake field is known yet, so any field
/// marked must-understand is refused: a newer peer that requires a feature can rely on an
/// older one saying no.
private func parseHandshakeExtensions(_ b: inout ByteBuffer, in what: String) throws(CatenaError) -> [RecordExtension] {
    let exts = try EncodedRecord.parseExtensions(ArraySlice(b.readBytes(length: b.readableBytes) ?? []))
    if let unknown = exts.first(where: \.mustUnderstand) {
        throw CatenaError(.unknownMustUnderstandField, "\(what) carries must-understand field \(unknown.tag), which this build does not know")
    }
    return exts
}

extension ByteBuffer {
    mutating func writeShortString(_ s: String) {
        precondition(s.utf8.count <= Int(UInt16.max), "identifiers on the wire are at most 65535 bytes")
        let bytes = Array(s.utf8)
        writeInteger(UInt16(bytes.count), endianness: .little)
        writeBytes(bytes)
    }

    mutating func readShortString(what: String) throws(CatenaError) -> String {
        guard let n = readInteger(endianness: .little, as: UInt16.self), let bytes = readBytes(length: Int(n)) else {
            throw CatenaError(.malformed, "\(what) is truncated")
        }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw CatenaError(.malformed, "\(what) is not UTF-8")
        }
        return s
    }
}
