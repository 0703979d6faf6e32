import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaWire
import NIOCore
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
