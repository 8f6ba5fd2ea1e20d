"""LGSP: the provincial data-sharing platform (nền tảng tích hợp, chia sẻ dữ liệu cấp tỉnh)."""

__version__ = "0.1.0"
