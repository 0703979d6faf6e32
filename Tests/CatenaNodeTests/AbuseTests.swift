import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaWire
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension InProcessChainTests {
    @Suite("Bad input and strangers")
    struct Abuse {
        @Test("raw-socket abuse gets error frames and closed connections while clients keep working",
              .timeLimit(.minutes(1)))
        func rawSocketAbuse() async throws {
            let helloDeadline = Duration.seconds(1)
            try await withTestCluster(.init(node: { _, configuration in
                configuration.connectionLimits.handshakeTimeout = helloDeadline
            })) { cluster in
                let client = cluster.client
                let hello = Frame(type: .hello, payload: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "abuser").encoded())
                let helloBytes = bytes(of: hello)
                let epoch = await cluster.epoch

                // A well-behaved client writes and reads all along.
                let stop = Atomic<Bool>(false)
                let background = Task { () throws -> Int in
                    var done = 0
                    while !stop.load(ordering: .relaxed) {
                        let value = Array("value \(done)".utf8)
                        let receipt = try await client.put("abuse/bystander", value)
                        let object = try await client.get("abuse/bystander")
                        guard object.bytes == value, object.info.lsn == receipt.lsn else {
                            throw HarnessError(description: "read \(object.info.lsn) after writing \(receipt.lsn)")
                        }
                        done += 1
                    }
                    return done
                }
                defer { stop.store(true, ordering: .relaxed) }

                for node in cluster.nodes {
                    let port = Int(node.address.port)
                    let label = "\(node.configuration.id)"

                    // Garbage (another protocol).
                    let garbage = try await RawExchange.run(port: port, sending: Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                    #expect(garbage.errorCodes == [.malformed], "\(label): \(garbage)")
                    #expect(garbage.closed, "\(label): \(garbage)")

                    // A truncated frame, then the client closes its side.
                    let truncated = try await RawExchange.run(port: port, sending: Array(helloBytes.prefix(20)), halfClose: true)
                    #expect(truncated.closed, "\(label): \(truncated)")
                    #expect(truncated.errorCodes.allSatisfy { $0 == .malformed }, "\(label): \(truncated)")
                    #expect(truncated.welcomed == false)

                    // An absurd length in the first frame: refused before its bytes are awaited.
                    var huge = ByteBuffer()
                    huge.writeInteger(Frame.magic, endianness: .little)
                    huge.writeInteger(UInt32.max - 1, endianness: .little)
                    let oversized = try await RawExchange.run(port: port, sending: Array(huge.readableBytesView))
                    #expect(oversized.errorCodes == [.frameTooLarge], "\(label): \(oversized)")
                    #expect(oversized.closed, "\(label): \(oversized)")

                    // The same after a good hello (the post-handshake limit).
                    var bigAfterHello = ByteBuffer()
                    bigAfterHello.writeInteger(Frame.magic, endianness: .little)
                    bigAfterHello.writeInteger(UInt32(64 << 20), endianness: .little)
                    let oversizedLater = try await RawExchange.run(port: port, sending: helloBytes + Array(bigAfterHello.readableBytesView))
                    #expect(oversizedLater.welcomed, "\(label): \(oversizedLater)")
                    #expect(oversizedLater.errorCodes == [.frameTooLarge], "\(label): \(oversizedLater)")
                    #expect(oversizedLater.closed, "\(label): \(oversizedLater)")

                    // A bad checksum.
                    var corrupt = helloBytes
                    corrupt[corrupt.count - 1] ^= 0xFF
                    let badChecksum = try await RawExchange.run(port: port, sending: corrupt)
                    #expect(badChecksum.errorCodes == [.checksumMismatch], "\(label): \(badChecksum)")
                    #expect(badChecksum.closed, "\(label): \(badChecksum)")

                    // A bad checksum after a good hello.
                    var corruptGet = bytes(of: Frame(type: .get, requestID: 1, epoch: epoch, payload: KeyPayload.encode(try Key("abuse/bystander"))))
                    corruptGet[40] ^= 0x01
                    let badChecksumLater = try await RawExchange.run(port: port, sending: helloBytes + corruptGet)
                    #expect(badChecksumLater.welcomed, "\(label): \(badChecksumLater)")
                    #expect(badChecksumLater.errorCodes == [.checksumMismatch], "\(label): \(badChecksumLater)")
                    #expect(badChecksumLater.closed, "\(label): \(badChecksumLater)")

                    // A hello of another cluster.
                    let stranger = bytes(of: Frame(type: .hello, payload: Hello(role: .client, clusterID: "other-cluster", senderID: "x").encoded()))
                    let wrongCluster = try await RawExchange.run(port: port, sending: stranger)
                    #expect(wrongCluster.errorCodes == [.wrongCluster], "\(label): \(wrongCluster)")
                    #expect(wrongCluster.closed, "\(label): \(wrongCluster)")
                    #expect(wrongCluster.welcomed == false)

                    // A request before the hello.
                    let early = bytes(of: Frame(type: .get, requestID: 7, epoch: epoch, payload: KeyPayload.encode(try Key("abuse/bystander"))))
                    let noHello = try await RawExchange.run(port: port, sending: early)
                    #expect(noHello.errorCodes == [.protocolViolation], "\(label): \(noHello)")
                    #expect(noHello.closed, "\(label): \(noHello)")
                    #expect(noHello.frames.allSatisfy { $0.type == .error }, "\(label): \(noHello)")

                    // An unknown frame type after a good hello.
                    let unknown = bytes(of: Frame(type: FrameType(rawValue: 250), requestID: 9, epoch: epoch))
                    let unknownType = try await RawExchange.run(port: port, sending: helloBytes + unknown)
                    #expect(unknownType.welcomed, "\(label): \(unknownType)")
                    #expect(unknownType.errorCodes == [.unknownFrameType], "\(label): \(unknownType)")
                    #expect(unknownType.closed, "\(label): \(unknownType)")

                    // A malformed request in an intact frame: an error reply, and the connection goes on.
                    var junk = ByteBuffer()
                    junk.writeBytes([RecordType.put.rawValue, 0x05])  // a put whose key is cut short
                    let malformedWrite = bytes(of: Frame(type: .write, requestID: 11, epoch: epoch, payload: junk))
                    let ping = bytes(of: Frame(type: .ping, requestID: 12, epoch: epoch))
                    let badRequest = try await RawExchange.run(port: port, sending: helloBytes + malformedWrite + ping) { frames in
                        frames.contains { $0.requestID == 11 } && frames.contains { $0.requestID == 12 }
                    }
                    #expect(badRequest.welcomed, "\(label): \(badRequest)")
                    #expect(badRequest.frames.first { $0.requestID == 11 }.flatMap(errorCode) == .malformed, "\(label): \(badRequest)")
                    #expect(badRequest.frames.contains { $0.requestID == 12 && $0.type == .pong }, "\(label): \(badRequest)")
                    #expect(badRequest.closed == false, "\(label): \(badRequest)")
                }

                // Peers that never finish their hello are cut off at the hello deadline, silently.
                let port = Int(cluster.head.address.port)
                let clock = ContinuousClock()
                for (name, payload) in [("silent", [UInt8]()), ("half a hello", Array(helloBytes.prefix(20)))] {
                    var exchange: RawExchange?
                    let elapsed = try await clock.measure {
                        exchange = try await RawExchange.run(port: port, sending: payload, timeout: helloDeadline * 4)
                    }
                    #expect(exchange?.closed == true, "\(name): \(exchange.map { "\($0)" } ?? "")")
                    #expect(exchange?.frames.isEmpty == true, "\(name): \(exchange.map { "\($0)" } ?? "")")
                    #expect(elapsed >= helloDeadline * 0.9, "\(name): closed after \(elapsed)")
                }

                stop.store(true, ordering: .relaxed)
                let done = try await background.value
                #expect(done > 0)

                // Afterwards the cluster still writes, reads and replicates.
                let after = try await client.put("abuse/after", Array("still here".utf8))
                #expect(try await client.get("abuse/after").bytes == Array("still here".utf8))
                for node in cluster.nodes {
                    #expect(try node.localStore.head(try Key("abuse/after"))?.lsn == after.lsn)
                }
            }
        }

        @Test("peers of another cluster are refused: a client gets wrongCluster, a node cannot join", .timeLimit(.minutes(1)))
        func otherCluster() async throws {
            try await withTestCluster { cluster in
                let masterAddress = cluster.master.address
                var configuration = CatenaClient.Configuration()
                configuration.clusterID = "other-cluster"
                configuration.requestTimeout = .seconds(5)
                let stranger = try CatenaClient(masters: [masterAddress.description], configuration: configuration, logger: testLogger)
                await #expect { try await stranger.connect() }
                    throws: { code(of: $0) == .wrongCluster }
                await stranger.close()

                // Straight to a node, as a client and as a node.
                for role in [PeerRole.client, .node] {
                    await #expect("\(role)") {
                        _ = try await RequestConnection.connect(
                            to: cluster.tail.address, hello: Hello(role: role, clusterID: "other-cluster", senderID: "n9"))
                    } throws: { code(of: $0) == .wrongCluster }
                }

                // A node of another cluster that claims a member's id heartbeats the master: it is
                // never configured, and the chain keeps its members' addresses.
                let before = await cluster.master.configuration
                var rogueConfiguration = NodeConfiguration(
                    id: try NodeID("n3"), clusterID: "other-cluster", listen: Address(host: "127.0.0.1", port: 0),
                    masters: [masterAddress], dataDirectory: cluster.directory + "/rogue")
                rogueConfiguration.heartbeatInterval = cluster.options.heartbeatInterval
                let rogue = try await Node.start(rogueConfiguration, logger: testLogger)
                let configured = Atomic<Bool>(false)
                let rogueTask = Task { await rogue.run(onReady: { _ in configured.store(true, ordering: .relaxed) }) }
                defer { rogueTask.cancel() }
                try await Task.sleep(for: cluster.options.heartbeatInterval * 15)
                rogueTask.cancel()
                await rogueTask.value
                #expect(configured.load(ordering: .relaxed) == false)
                #expect(rogue.chainConfiguration == nil)
                #expect(await cluster.master.configuration == before)

                let receipt = try await cluster.client.put("oc/still", Array("works".utf8))
                #expect(try await cluster.client.get("oc/still").info.lsn == receipt.lsn)
            }
        }
    }
}

/// The encoded bytes of `frame`.
func bytes(of frame: Frame) -> [UInt8] {
    Array(frame.encoded().readableBytesView)
}

/// The code an error frame carries, nil for other frames.
func errorCode(_ frame: Frame) -> CatenaError.Code? {
    guard frame.type == .error else { return nil }
    return (try? ErrorPayload.decode(frame.payload))?.code
}

/// One raw TCP exchange with a server on 127.0.0.1, with plain blocking sockets on NIO's
/// blocking-I/O thread pool (never on Swift's cooperative pool): connect, send bytes, optionally
/// shut down the sending side, then read until the server closes or `timeout` passes.
struct RawExchange: CustomStringConvertible {
    /// The frames the server sent (decoded while they parse).
    var frames: [Frame]
    /// Whether the server closed the connection (end of stream or reset) within the timeout
    /// (false also when `until` was satisfied first).
    var closed: Bool
    /// Bytes that did not parse as frames.
    var unparsed: Int

    /// The codes of the error frames received.
    var errorCodes: [CatenaError.Code] { frames.compactMap(errorCode) }
    /// Whether the server welcomed the hello.
    var welcomed: Bool { frames.first?.type == .welcome }

    var description: String {
        "frames \(frames.map { $0.type == .error ? "error(\(errorCode($0).map { "\($0)" } ?? "?"))" : "\($0.type)" }), closed \(closed), \(unparsed) unparsed bytes"
    }

    /// `until`: stop reading (with the connection still open) once the frames received satisfy it.
    static func run(port: Int, sending payload: [UInt8], halfClose: Bool = false, timeout: Duration = .seconds(3),
                    until: @escaping @Sendable ([Frame]) -> Bool = { _ in false }) async throws -> RawExchange {
        let received = try await onOwnThread { () throws -> (bytes: [UInt8], closed: Bool) in
            try exchange(port: port, payload: payload, halfClose: halfClose, timeout: timeout) { until(parse($0).frames) }
        }
        let (frames, unparsed) = parse(received.bytes)
        return RawExchange(frames: frames, closed: received.closed, unparsed: unparsed)
    }

    /// The frames at the start of `bytes`, and how many bytes after them did not parse.
    private static func parse(_ bytes: [UInt8]) -> (frames: [Frame], unparsed: Int) {
        var buffer = ByteBuffer(bytes: bytes)
        var frames: [Frame] = []
        let parser = FrameParser()
        while let frame = try? parser.next(&buffer) { frames.append(frame) }
        return (frames, buffer.readableBytes)
    }

    private static func exchange(port: Int, payload: [UInt8], halfClose: Bool, timeout: Duration,
                                 enough: ([UInt8]) -> Bool) throws -> (bytes: [UInt8], closed: Bool) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw HarnessError(description: "connect to port \(port): errno \(errno)") }
        var slice = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, socklen_t(MemoryLayout<timeval>.size))

        var sent = 0
        while sent < payload.count {
            let n = payload[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { break }  // the server may close before reading everything
            sent += n
        }
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }

        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                received += chunk[0..<n]
                if enough(received) { return (received, false) }
            } else if n == 0 {
                return (received, true)
            } else if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                continue
            } else {
                return (received, true)  // reset
            }
        }
        return (received, false)
    }
}
