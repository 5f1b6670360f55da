"""Frame decoding: the same image gives the same pixels however the source stores it."""
import cv2
import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.core.frames import _decode_video_av, decode_colors
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns
from pipeline.core.scene import frames_columns


def _frames(rows):
    cols = frames_columns(len(rows))
    for i, row in enumerate(rows):
        for key, value in row.items():
            cols[key][i] = value
    return table_from_columns(FRAMES_SCHEMA, cols)


def _image(seed, h=48, w=64):
    """Smooth colour gradients (codecs with chroma subsampling keep them well) plus a seed-dependent shift."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y + 40 * seed) % 255], axis=-1)
    return img.astype(np.uint8)


def _write_video(path, images, fps=30):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        stream.options = {"qscale": "2"}
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_jpeg_inside_a_container_equals_the_same_jpeg_file(tmp_path):
    images = [_image(i) for i in range(3)]
    blobs = [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    container = tmp_path / "stream.bin"
    offsets, data = [], b"HEADER"
    for blob in blobs:
        offsets.append(len(data))
        data += blob + b"\x00" * 7
    container.write_bytes(data)
    for i, blob in enumerate(blobs):
        (tmp_path / f"{i}.jpg").write_bytes(blob)
    in_file = decode_colors(_frames([{"color_kind": "sens_jpeg", "color_path": str(container), "color_offset": o,
                                      "color_length": len(b)} for o, b in zip(offsets, blobs)]))
    as_files = decode_colors(_frames([{"color_kind": "image", "color_path": str(tmp_path / f"{i}.jpg")}
                                      for i in range(3)]))
    for a, b, ref in zip(in_file, as_files, images):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (48, 64, 3) and np.abs(a.astype(int) - ref).mean() < 4  # RGB order, not BGR


def test_video_frames_decoded_by_decord_match_pyav_and_png_export(tmp_path):
    images = [_image(i) for i in range(6)]
    video = tmp_path / "rgb.mp4"
    _write_video(video, images)
    wanted = [4, 1, 3]
    got = decode_colors(_frames([{"color_kind": "video", "color_path": str(video), "color_offset": k} for k in wanted]))
    reference = _decode_video_av(str(video), wanted)
    for k, img in zip(wanted, got):
        np.testing.assert_array_equal(img, reference[k])
        assert np.abs(img.astype(int) - images[k]).mean() < 6
    # The same frames exported losslessly to PNG decode to the same pixels.
    for k in wanted:
        cv2.imwrite(str(tmp_path / f"f{k}.png"), cv2.cvtColor(reference[k], cv2.COLOR_RGB2BGR))
    pngs = decode_colors(_frames([{"color_kind": "image", "color_path": str(tmp_path / f"f{k}.png")} for k in wanted]))
    for a, b in zip(got, pngs):
        np.testing.assert_array_equal(a, b)


def test_rotation_makes_images_upright(tmp_path):
    img = _image(3)
    cv2.imwrite(str(tmp_path / "s.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (out,) = decode_colors(_frames([{"color_kind": "image", "color_path": str(tmp_path / "s.png"), "rotate_k": 1}]))
    np.testing.assert_array_equal(out, np.rot90(img, 1))


def test_corrupt_sources_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg.*corrupt"):
        decode_colors(_frames([{"color_kind": "image", "color_path": str(bad)}]))
    video = tmp_path / "cut.mp4"
    _write_video(video, [_image(i) for i in range(4)])
    video.write_bytes(video.read_bytes()[:300])
    with pytest.raises(InputError, match="cut.mp4"):
        decode_colors(_frames([{"color_kind": "video", "color_path": str(video), "color_offset": 2}]))
    short = tmp_path / "short.bin"
    short.write_bytes(b"abc")
    with pytest.raises(InputError, match="short.bin.*truncated"):
        decode_colors(_frames([{"color_kind": "sens_jpeg", "color_path": str(short), "color_offset": 0,
                                "color_length": 100}]))


def test_damaged_or_truncated_jpeg_is_an_error(tmp_path):
    img = _image(1, 96, 128)
    blob = bytearray(cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())
    # Damaged marker segments (tables / frame header) behind an intact start marker.
    broken = bytearray(blob)
    broken[2:60] = bytes(range(58))
    (tmp_path / "tables.jpg").write_bytes(bytes(broken))
    # Cut short: OpenCV alone only warns "premature end of data segment" and returns grey pixels.
    (tmp_path / "cut.jpg").write_bytes(bytes(blob[: len(blob) // 2]))
    for name in ("tables.jpg", "cut.jpg"):
        with pytest.raises(InputError, match=name + ".*corrupt"):
            decode_colors(_frames([{"color_kind": "image", "color_path": str(tmp_path / name)}]))


def test_exif_orientation_does_not_rotate_pixels(tmp_path):
    """Orientation is handled by the reader (rotate_k); an EXIF tag in a JPEG must not rotate the decoded pixels."""
    from PIL import Image

    img = _image(2, 48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "tagged.jpg", quality=95, exif=exif)
    Image.fromarray(img).save(tmp_path / "plain.jpg", quality=95)
    tagged, plain = decode_colors(_frames([{"color_kind": "image", "color_path": str(tmp_path / "tagged.jpg")},
                                           {"color_kind": "image", "color_path": str(tmp_path / "plain.jpg")}]))
    assert tagged.shape == (48, 64, 3)
    np.testing.assert_array_equal(tagged, plain)
