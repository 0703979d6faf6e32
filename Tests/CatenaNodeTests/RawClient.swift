import CatenaClusterTestSupport
import CatenaCore
import CatenaWire
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A raw TCP connection to a server on 127.0.0.1 that stays open across calls, for tests that
/// hold many connections or pipeline bytes without waiting for replies. The socket is
/// non-blocking after `connect`, so no call ever blocks a thread: waits poll with `Task.sleep`.
/// Not thread-safe: one task uses it.
final class RawClient {
    private var fd: Int32
    private var inbound = ByteBuffer()
    /// Frames received so far, in order.
    private(set) var frames: [Frame] = []
    /// Whether the server closed the connection (end of stream or reset).
    private(set) var closed = false
    /// Bytes sent so far.
    private(set) var sent = 0
    /// Bytes queued by ``queue(_:)`` and not yet sent.
    private var outgoing: [UInt8] = []
    private var outgoingAt = 0

    /// Connects to `port` (blocking connect: loopback answers at once, or refuses).
    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError(description: "socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let e = errno
            closeSocket(fd)
            throw HarnessError(description: "connect to port \(port): errno \(e)")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { close() }

    /// Closes the socket (idempotent).
    func close() {
        if fd >= 0 {
            closeSocket(fd)
            fd = -1
        }
    }

    /// The error codes of the error frames received.
    var errorCodes: [CatenaError.Code] { frames.compactMap(errorCode) }
    /// Whether the first frame received was a welcome.
    var welcomed: Bool { frames.first?.type == .welcome }

    /// Queues `bytes` to send; ``pump()`` sends what the socket takes.
    func queue(_ bytes: [UInt8]) {
        if outgoingAt == outgoing.count {
            outgoing = bytes
            outgoingAt = 0
        } else {
            outgoing += bytes
        }
    }

    /// Queues `frame`.
    func queue(_ frame: Frame) { queue(Array(frame.encoded().readableBytesView)) }

    /// Bytes queued and not yet taken by the socket.
    var unsent: Int { outgoing.count - outgoingAt }

    /// Sends what the socket takes now and reads what arrived, without waiting.
    func pump() {
        guard fd >= 0 else { return }
        while outgoingAt < outgoing.count {
            let n = outgoing[outgoingAt...].withUnsafeBytes { send(fd, $0.baseAddress, min($0.count, 1 << 20), Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                outgoingAt += n
                sent += n
            } else {
                break  // EAGAIN (the peer stopped reading), or an error the read below sees
            }
        }
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while !closed {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                inbound.writeBytes(chunk[0..<n])
            } else if n == 0 {
                closed = true
            } else if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                break
            } else {
                closed = true
            }
        }
        let parser = FrameParser()
        while let frame = try? parser.next(&inbound) { frames.append(frame) }
    }

    /// Pumps until `condition` holds or `timeout` passes; returns whether it held.
    @discardableResult
    func pump(until condition: (RawClient) -> Bool, timeout: Duration = .seconds(10)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            pump()
            if condition(self) { return true }
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Says hello as `role` and waits for the answer (a welcome, or an error and the close).
    func hello(role: PeerRole = .client, clusterID: String = TestCluster.clusterID, name: String = "raw") async throws {
        queue(Frame(type: .hello, payload: Hello(role: role, clusterID: clusterID, senderID: name).encoded()))
        try await pump(until: { !$0.frames.isEmpty || $0.closed })
    }

    /// Sends a ping with `id` and waits for its pong; false if none came in time.
    func ping(id: UInt64, timeout: Duration = .seconds(10)) async throws -> Bool {
        queue(Frame(type: .ping, requestID: id))
        return try await pump(until: { $0.frames.contains { $0.requestID == id && $0.type == .pong } || $0.closed }, timeout: timeout)
            && frames.contains { $0.requestID == id && $0.type == .pong }
    }
}

/// `close(2)`, out of reach of ``RawClient/close()``'s name.
private func closeSocket(_ fd: Int32) {
    close(fd)
}
