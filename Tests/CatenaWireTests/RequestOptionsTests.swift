import CatenaCore
import CatenaWire
import NIOCore
import Testing

@Suite("Request options in the frame header extension")
struct RequestOptionsTests {
    @Test("Every read mode round-trips, through a whole frame too")
    func readModesRoundTrip() throws {
        #expect(RequestOptions().encoded().isEmpty)
        #expect(try RequestOptions(decoding: []).readMode == nil)
        for mode in ReadMode.allCases {
            let options = RequestOptions(readMode: mode)
            #expect(options.encoded() == [1, 1, mode.rawValue])
            #expect(try RequestOptions(decoding: options.encoded()) == options)
            var buffer = ByteBuffer()
            Frame(type: .get, requestID: 7, headerExtension: options.encoded(), payload: ByteBuffer(bytes: [1, 2])).encode(into: &buffer)
            let frame = try #require(try FrameParser().next(&buffer))
            #expect(try frame.options.readMode == mode)
        }
    }

    @Test("Unknown tags are skipped; a field past the end or an unknown read mode is malformed")
    func unknownAndMalformed() throws {
        // A later option (tag 9, 3 bytes) before and after the read mode.
        #expect(try RequestOptions(decoding: [9, 3, 0, 0, 0, 1, 1, 2, 9, 0]).readMode == .any)
        for bad: [UInt8] in [[1], [1, 2, 0], [1, 1, 7], [1, 0], [9, 4, 0, 0, 0]] {
            #expect { try RequestOptions(decoding: bad) } throws: { ($0 as? CatenaError)?.code == .malformed }
        }
    }

    @Test("Acknowledgement modes round-trip; all is the absence of the field")
    func ackModesRoundTrip() throws {
        #expect(RequestOptions(ack: .all).encoded().isEmpty)
        for mode in [AckMode.head, .first(2), .first(7)] {
            #expect(try RequestOptions(decoding: RequestOptions(ack: mode).encoded()).ack == mode)
        }
        #expect(RequestOptions(readMode: .any, ack: .first(3)).encoded() == [1, 1, 2, 2, 1, 3])
        #expect(try RequestOptions(decoding: [2, 1, 0]).ack == .all)
        #expect { try RequestOptions(decoding: [2, 2, 1, 1]) } throws: { ($0 as? CatenaError)?.code == .malformed }
        for name in ["all", "head", "2", "255"] { #expect(AckMode(name: name)?.description == name) }
        for bad in ["0", "256", "most", ""] { #expect(AckMode(name: bad) == nil) }
        #expect(AckMode.first(1) == .head)
    }

    @Test("A session's LSN round-trips; a wrong length is malformed")
    func sessionRoundTrips() throws {
        let lsn = LSN(epoch: 0x0102_0304_0506_0708, seq: 0x1112_1314_1516_1718)
        let options = RequestOptions(readMode: .any, session: lsn)
        #expect(options.encoded().count == 3 + 2 + 16)
        #expect(try RequestOptions(decoding: options.encoded()) == options)
        #expect { try RequestOptions(decoding: [3, 8, 1, 2, 3, 4, 5, 6, 7, 8]) } throws: { ($0 as? CatenaError)?.code == .malformed }
    }

    @Test("Read modes have command-line names")
    func names() {
        for mode in ReadMode.allCases { #expect(ReadMode(name: mode.description) == mode) }
        #expect(ReadMode(name: "eventual") == nil)
    }
}
