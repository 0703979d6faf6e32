import CatenaCore
import NIOCore

/// What a frame carries. A struct, not an enum: unknown types can be named in errors and passed
/// to the layer that decides how to refuse them.
///
/// Ranges: 1–15 connection (handshake, errors, liveness); 16–63 client requests and replies;
/// 64–127 replication between nodes; 128–191 master; 192–255 reserved.
public struct FrameType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// First frame of every connection: protocol versions, cluster id, role.
    public static let hello = FrameType(rawValue: 1)
    /// The accepted handshake: the chosen protocol version.
    public static let welcome = FrameType(rawValue: 2)
    /// An error reply (code and message); after a connection-level error the sender closes.
    public static let error = FrameType(rawValue: 3)
    /// Liveness probe.
    public static let ping = FrameType(rawValue: 4)
    /// Answer to a ping.
    public static let pong = FrameType(rawValue: 5)

    /// The connection-level types this build knows (request types are added by their layers).
    public static let connectionTypes: Set<FrameType> = [.hello, .welcome, .error, .ping, .pong]

    public var description: String {
        switch self {
        case .hello: "hello"
        case .welcome: "welcome"
        case .error: "error"
        case .ping: "ping"
        case .pong: "pong"
        case .write: "write"
        case .writeResult: "writeResult"
        case .get: "get"
        case .objectInfo: "objectInfo"
        case .objectData: "objectData"
        case .head: "head"
        case .list: "list"
        case .listPage: "listPage"
        case .getRange: "getRange"
        case .copy: "copy"
        case .listUploads: "listUploads"
        case .uploadPage: "uploadPage"
        case .listParts: "listParts"
        case .partPage: "partPage"
        case .scrub: "scrub"
        case .scrubPage: "scrubPage"
        case .catchUpRequest: "catchUpRequest"
        case .catchUpChunk: "catchUpChunk"
        case .replicate: "replicate"
        case .acknowledge: "acknowledge"
        case .position: "position"
        case .readTarget: "readTarget"
        case .getConfiguration: "getConfiguration"
        case .configuration: "configuration"
        case .heartbeat: "heartbeat"
        case .addNode: "addNode"
        case .removeNode: "removeNode"
        case .getStatus: "getStatus"
        case .chainStatus: "chainStatus"
        case .getNodeStatus: "getNodeStatus"
        case .nodeStatus: "nodeStatus"
        default: "type(\(rawValue))"
        }
    }
}

/// Per-frame flags. Bits this build does not know are carried unchanged.
public struct FrameFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The frame answers a request (same request id).
    public static let reply = FrameFlags(rawValue: 1 << 0)
    /// More frames of the same request follow (streamed bodies).
    public static let more = FrameFlags(rawValue: 1 << 1)
}

/// One frame of Catena's TCP protocol.
///
/// Layout (little-endian), frame format 1:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `CATN` |
/// | 4 | 4 | frame length, header to checksum inclusive |
/// | 8 | 2 | header length (32 in format 1; later formats append fields, older readers skip them) |
/// | 10 | 1 | type |
/// | 11 | 1 | flags |
/// | 12 | 4 | chain id |
/// | 16 | 8 | request id |
/// | 24 | 8 | sender's configuration epoch (fencing) |
/// | 32 | h-32 | header extension (fields added later, e.g. ack mode, minimum LSN) |
/// | h | n | payload |
/// | end-8 | 8 | XXH3-64 of everything before |
public struct Frame: Hashable, Sendable {
    /// `CATN`.
    public static let magic: UInt32 = 0x4E54_4143
    /// The header length this build writes.
    public static let headerSize = 32
    /// Size of the trailing checksum.
    public static let trailerSize = 8
    /// The smallest valid frame.
    public static let minimumSize = headerSize + trailerSize

    /// What the frame carries.
    public var type: FrameType
    /// Flags.
    public var flags: FrameFlags
    /// The chain the frame is about (0 for connection-level frames).
    public var chainID: ChainID
    /// Pairs replies with requests; chosen by the requester.
    public var requestID: UInt64
    /// The sender's configuration epoch; receivers refuse older epochs.
    public var epoch: UInt64
    /// Header fields from a later format that this build does not interpret, kept verbatim.
    public var headerExtension: [UInt8]
    /// The payload.
    public var payload: ByteBuffer

    /// Creates a frame.
    public init(type: FrameType, flags: FrameFlags = [], chainID: ChainID = 0, requestID: UInt64 = 0,
                epoch: UInt64 = 0, headerExtension: [UInt8] = [], payload: ByteBuffer = ByteBuffer()) {
        self.type = type
        self.flags = flags
        self.chainID = chainID
        self.requestID = requestID
        self.epoch = epoch
        self.headerExtension = headerExtension
        self.payload = payload
    }

    /// The encoded size of this frame.
    public var encodedSize: Int { Frame.minimumSize + headerExtension.count + payload.readableBytes }

    /// Appends the encoded frame to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        precondition(Frame.headerSize + headerExtension.count <= Int(UInt16.max), "frame header extension too long")
        precondition(encodedSize <= Int(UInt32.max), "frame larger than 4 GiB")
        let start = buffer.writerIndex
        let headerLength = Frame.headerSize + headerExtension.count
        buffer.reserveCapacity(minimumWritableBytes: encodedSize)
        buffer.writeInteger(Frame.magic, endianness: .little)
        buffer.writeInteger(UInt32(encodedSize), endianness: .little)
        buffer.writeInteger(UInt16(headerLength), endianness: .little)
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(flags.rawValue)
        buffer.writeInteger(chainID, endianness: .little)
        buffer.writeInteger(requestID, endianness: .little)
        buffer.writeInteger(epoch, endianness: .little)
        buffer.writeBytes(headerExtension)
        var payload = payload
        buffer.writeBuffer(&payload)
        let sum = buffer.withUnsafeReadableBytes { raw in
            XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[(start - buffer.readerIndex)...]))
        }
        buffer.writeInteger(sum, endianness: .little)
    }

    /// The encoded frame.
    public func encoded() -> ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }
}

/// Cuts frames out of a byte stream. Pure: no I/O, no allocation beyond the frames it returns.
///
/// It fails fast on garbage: a wrong magic byte is refused as soon as it arrives, and a length
/// above ``maxFrameSize`` is refused before its bytes are awaited, so a peer can never make the
/// receiver buffer more than one maximal frame.
public struct FrameParser: Sendable {
    /// The largest frame accepted. Default 17 MiB: a 16 MiB value plus headroom.
    public let maxFrameSize: Int

    /// Creates a parser.
    public init(maxFrameSize: Int = 17 << 20) {
        precondition(maxFrameSize >= Frame.minimumSize, "maxFrameSize must be at least \(Frame.minimumSize)")
        self.maxFrameSize = maxFrameSize
    }

    /// The next complete frame at the front of `buffer` (consumed), or nil if more bytes are
    /// needed. Throws ``CatenaError`` with code `malformed` (bad magic, impossible lengths),
    /// `frameTooLarge` or `checksumMismatch`; after an error the stream cannot be resynchronized.
    public func next(_ buffer: inout ByteBuffer) throws(CatenaError) -> Frame? {
        let available = buffer.readableBytes
        let magicBytes = min(4, available)
        for i in 0..<magicBytes {
            let expected = UInt8(truncatingIfNeeded: Frame.magic >> (8 * UInt32(i)))
            guard buffer.getInteger(at: buffer.readerIndex + i, as: UInt8.self) == expected else {
                throw CatenaError(.malformed, "not a Catena frame (bad magic); is the peer speaking another protocol?")
            }
        }
        guard available >= 8, let length32 = buffer.getInteger(at: buffer.readerIndex + 4, endianness: .little, as: UInt32.self) else {
            return nil
        }
        let length = Int(length32)
        guard length <= maxFrameSize else {
            throw CatenaError(.frameTooLarge, "frame of \(length) bytes exceeds the \(maxFrameSize)-byte limit")
        }
        guard length >= Frame.minimumSize else {
            throw CatenaError(.malformed, "frame length \(length) is below the \(Frame.minimumSize)-byte minimum")
        }
        guard available >= length else { return nil }
        let start = buffer.readerIndex
        let headerLength = Int(buffer.getInteger(at: start + 8, endianness: .little, as: UInt16.self)!)
        guard headerLength >= Frame.headerSize, headerLength <= length - Frame.trailerSize else {
            throw CatenaError(.malformed, "frame header length \(headerLength) does not fit a \(length)-byte frame")
        }
        let stored = buffer.getInteger(at: start + length - Frame.trailerSize, endianness: .little, as: UInt64.self)!
        let computed = buffer.withUnsafeReadableBytes { raw in
            XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[0..<(length - Frame.trailerSize)]))
        }
        guard stored == computed else {
            throw CatenaError(.checksumMismatch, "frame checksum mismatch")
        }
        let frame = Frame(
            type: FrameType(rawValue: buffer.getInteger(at: start + 10, as: UInt8.self)!),
            flags: FrameFlags(rawValue: buffer.getInteger(at: start + 11, as: UInt8.self)!),
            chainID: buffer.getInteger(at: start + 12, endianness: .little, as: UInt32.self)!,
            requestID: buffer.getInteger(at: start + 16, endianness: .little, as: UInt64.self)!,
            epoch: buffer.getInteger(at: start + 24, endianness: .little, as: UInt64.self)!,
            headerExtension: buffer.getBytes(at: start + Frame.headerSize, length: headerLength - Frame.headerSize)!,
            payload: buffer.getSlice(at: start + headerLength, length: length - Frame.trailerSize - headerLength)!
        )
        buffer.moveReaderIndex(forwardBy: length)
        return frame
    }
}

/// The NIO decoder over ``FrameParser``: bytes in, ``Frame``s out. Errors reach the pipeline's
/// `errorCaught`; the connection handler answers with an error frame where it can and closes.
///
/// The first frame of a connection (the handshake) has its own, smaller limit, so a peer that
/// has not even said who it is cannot make the receiver buffer a maximal frame.
public struct FrameDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = Frame

    private let parser: FrameParser
    private var firstFrameParser: FrameParser?

    /// Creates a decoder accepting frames up to `maxFrameSize` bytes, and a first frame of at
    /// most `firstFrameLimit` bytes (default: no separate limit).
    public init(maxFrameSize: Int = 17 << 20, firstFrameLimit: Int? = nil) {
        parser = FrameParser(maxFrameSize: maxFrameSize)
        firstFrameParser = firstFrameLimit.map { FrameParser(maxFrameSize: min($0, maxFrameSize)) }
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try (firstFrameParser ?? parser).next(&buffer) else { return .needMoreData }
        firstFrameParser = nil
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 && seenEOF {
            throw CatenaError(.malformed, "connection closed in the middle of a frame (\(buffer.readableBytes) bytes left)")
        }
        return .needMoreData
    }
}

/// The NIO encoder: ``Frame``s out as bytes.
public struct FrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = Frame

    /// Creates an encoder.
    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        data.encode(into: &out)
    }
}
