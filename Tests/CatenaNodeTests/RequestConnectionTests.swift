import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaWire
import NIOCore
import NIOPosix
import Synchronization
import Testing

extension InProcessChainTests {
    /// ``RequestConnection`` against a ``FrameServer`` that streams numbered frames: its replies
    /// reach their streams in order, and a stream whose buffer is full stops the connection's
    /// reads, so the server cannot push more than the sockets hold.
    @Suite("Request connections")
    struct RequestConnectionTests {
        /// Frames of the stream, and their payload size.
        static let frames = 2_000
        static let frameBytes = 32 << 10

        @Test("a stream's full window stops the connection's reads; drained, every frame arrives in order and the connection serves on",
              .timeLimit(.minutes(1)))
        func fullWindowStopsReads() async throws {
            let written = Atomic<Int>(0)
            let server = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: TestCluster.clusterID, localID: "streamer",
                                                    acceptedRoles: [.client], logger: testLogger)
            let serving = Task {
                await server.run { (connection, reader) async throws(CatenaError) in
                    while let frame = try await reader.next() {
                        guard frame.type == .get else {
                            try? await connection.outbound.write(Frame(type: .pong, flags: .reply, requestID: frame.requestID))
                            continue
                        }
                        for i in 0..<Self.frames {
                            var payload = ByteBuffer(repeating: UInt8(truncatingIfNeeded: i), count: Self.frameBytes)
                            payload.setInteger(UInt32(i), at: 0)
                            let flags: FrameFlags = i == Self.frames - 1 ? .reply : [.reply, .more]
                            do {
                                try await connection.outbound.write(Frame(type: .objectData, flags: flags, requestID: frame.requestID, payload: payload))
                            } catch {
                                return
                            }
                            written.add(1, ordering: .relaxed)
                        }
                    }
                }
            }
            defer {
                server.close()
                serving.cancel()
            }
            let connection = try await RequestConnection.connect(to: Address(host: "127.0.0.1", port: UInt16(server.port)),
                                                                 hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
            defer { connection.close() }
            let replies = try await connection.stream(Frame(type: .get), timeout: .seconds(30), window: 4)
            let first = try #require(try await replies.next())
            #expect(first.payload.getInteger(at: 0, as: UInt32.self) == 0)

            // Unread, the stream holds the server back: what it wrote stops growing far below
            // the 64 MiB it has to send (the sockets' buffers hold a few MiB).
            var last = -1
            var steady = 0
            while steady < 5 {
                try await Task.sleep(for: .milliseconds(100))
                let now = written.load(ordering: .relaxed)
                steady = now == last ? steady + 1 : 0
                last = now
            }
            #expect(last < Self.frames / 2, "the server wrote \(last) of \(Self.frames) frames to a client that read one")

            // Read on: every frame, in order, then the end; the connection still answers.
            var expected: UInt32 = 1
            while let frame = try await replies.next() {
                #expect(frame.payload.readableBytes == Self.frameBytes)
                let index = frame.payload.getInteger(at: 0, as: UInt32.self)
                #expect(index == expected, "frame \(String(describing: index)) where \(expected) was due")
                guard index == expected else { break }
                expected += 1
            }
            #expect(expected == UInt32(Self.frames))
            let pong = try await connection.request(Frame(type: .ping), timeout: .seconds(10))
            #expect(pong.type == .pong)
        }

        @Test("a large request its peer does not take ends the connection at the request's deadline, whether or not its sender is cancelled first",
              .timeLimit(.minutes(1)))
        func stuckLargeWrite() async throws {
            let peer = try await StalledPeer.start()
            defer { peer.close() }
            let address = Address(host: "127.0.0.1", port: UInt16(peer.port))
            let hello = Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t")
            // 16 MiB: more than the two sockets' buffers hold, so the write cannot complete.
            let large = Frame(type: .write, payload: ByteBuffer(repeating: 7, count: 16 << 20))

            let timed = try await RequestConnection.connect(to: address, hello: hello)
            let started = ContinuousClock.now
            do {
                let replies = try await timed.stream(large, timeout: .seconds(1))
                _ = try await replies.next()
                Issue.record("a request its peer never read was answered")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
            #expect(ContinuousClock.now - started < .seconds(10), "the sender waited past its 1 s deadline")
            #expect(timed.isClosed)

            // Cancelled, the sender leaves at once; its frame stays on the connection, which the
            // deadline ends all the same.
            let cancelled = try await RequestConnection.connect(to: address, hello: hello)
            let sender = Task { try await cancelled.stream(large, timeout: .seconds(2)) }
            try await Task.sleep(for: .milliseconds(300))
            let cancelledAt = ContinuousClock.now
            sender.cancel()
            let outcome = await sender.result
            #expect(ContinuousClock.now - cancelledAt < .seconds(1), "a cancelled sender waited for its write")
            #expect(Self.code(outcome) == .cancelled)
            let deadlineFrom = ContinuousClock.now
            while !cancelled.isClosed, ContinuousClock.now - deadlineFrom < .seconds(10) {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(cancelled.isClosed, "a connection stuck on a cancelled request's frame was kept past its deadline")
        }

        @Test("a large request cancelled while it is sent ends its caller at once; the connection serves the requests behind it",
              .timeLimit(.minutes(1)))
        func cancelledLargeWrite() async throws {
            let peer = try await StalledPeer.start()
            defer { peer.close() }
            let connection = try await RequestConnection.connect(to: Address(host: "127.0.0.1", port: UInt16(peer.port)),
                                                                 hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
            defer { connection.close() }
            let large = Frame(type: .write, payload: ByteBuffer(repeating: 7, count: 16 << 20))
            let sender = Task { try await connection.stream(large, timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(300))
            let ping = Task { try await connection.request(Frame(type: .ping), timeout: .seconds(30)) }
            let cancelledAt = ContinuousClock.now
            sender.cancel()
            let outcome = await sender.result
            #expect(ContinuousClock.now - cancelledAt < .seconds(1), "a cancelled sender waited for its write")
            #expect(Self.code(outcome) == .cancelled)
            #expect(!connection.isClosed, "one caller's cancellation failed the shared connection")

            // The peer reads again: the cancelled frame goes out whole, its reply is dropped, and
            // the request queued behind it is answered.
            peer.resume()
            let pong = try await ping.value
            #expect(pong.type == .pong)
            #expect(try await connection.request(Frame(type: .ping), timeout: .seconds(10)).type == .pong)
            #expect(!connection.isClosed)
        }

        /// The error code a stream request's task ended with; nil if it succeeded.
        static func code(_ outcome: Result<ReplyStream, any Error>) -> CatenaError.Code? {
            guard case .failure(let error) = outcome else { return nil }
            return (error as? CatenaError)?.code
        }

        /// Past the client cap (a slot is left for peers), the server reads the hello and answers
        /// it with `busy`. (Past every slot it answers at once, before reading anything; a hello
        /// already sent then makes its close a reset, which may overtake the answer: the client
        /// sees `unavailable`. Either way it retries.)
        @Test("a server at its client cap answers the hello with busy; the connection it holds serves on", .timeLimit(.minutes(1)))
        func busyAtTheClientCap() async throws {
            var limits = ConnectionLimits()
            limits.maxConnections = 1
            limits.reservedPeerConnections = 1
            let server = try await TestFrameServer.start(limits: limits)
            let address = Address(host: "127.0.0.1", port: UInt16(server.port))
            let hello = Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t")
            do {
                let first = try await RequestConnection.connect(to: address, hello: hello)
                defer { first.close() }
                do {
                    let second = try await RequestConnection.connect(to: address, hello: hello)
                    second.close()
                    Issue.record("a connection past the cap was welcomed")
                } catch {
                    #expect(error.code == .busy, "\(error)")
                }
                #expect(try await first.request(Frame(type: .ping), timeout: .seconds(10)).type == .pong)
            } catch {
                await server.stop()
                throw error
            }
            await server.stop()
        }
    }
}

/// A peer on 127.0.0.1 that welcomes a client's hello and then reads nothing more — what a
/// stopped or stuck node looks like to a sender — until ``resume()``; from then on it answers
/// every frame with a pong.
private final class StalledPeer: Sendable {
    let channel: any Channel
    private let accepted: Children
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: any Channel, accepted: Children) {
        self.channel = channel
        self.accepted = accepted
    }

    static func start() async throws -> StalledPeer {
        let children = Children()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { child in
                children.add(child)
                return child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                    try child.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
                    try child.pipeline.syncOperations.addHandler(WelcomeThenStall())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return StalledPeer(channel: channel, accepted: children)
    }

    /// Its accepted connections read again.
    func resume() {
        for child in accepted.list.withLock({ $0 }) {
            child.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in child.read() }
        }
    }

    func close() {
        for child in accepted.list.withLock({ $0 }) { child.close(promise: nil) }
        channel.close(promise: nil)
    }

    private final class Children: Sendable {
        let list = Mutex<[any Channel]>([])
        func add(_ child: any Channel) { list.withLock { $0.append(child) } }
    }

    /// Answers the first frame with a welcome and turns reading off; answers every later frame
    /// with a pong.
    private final class WelcomeThenStall: ChannelInboundHandler {
        typealias InboundIn = Frame
        typealias OutboundOut = Frame
        private var welcomed = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !welcomed else {
                let frame = unwrapInboundIn(data)
                context.writeAndFlush(wrapOutboundOut(Frame(type: .pong, flags: .reply, requestID: frame.requestID)), promise: nil)
                return
            }
            welcomed = true
            let welcome = Welcome(version: ProtocolVersion.current, clusterID: TestCluster.clusterID, responderID: "stalled")
            context.writeAndFlush(wrapOutboundOut(Frame(type: .welcome, payload: welcome.encoded())), promise: nil)
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }
}
