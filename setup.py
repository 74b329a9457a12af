from setuptools import find_packages, setup

setup(
    name="gridlike",
    version="0.1.0",
    description="A job server for improvised compute grids, on Twisted.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # twisted.plugins carries our twistd plugin; it must not get an __init__.py.
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"gridlike": ["py.typed"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "klein>=24.8",
        "treq>=24.9",
        "txredisapi>=1.4",
        "service-identity>=24.1",
        "attrs>=24.2",
        "zope.interface>=6",
        "automat>=24.8",
        "python-multipart>=0.0.20",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "websocket-client>=1.8",
            "requests>=2.31",
            "psutil>=5.9",
        ],
    },
    entry_points={"console_scripts": ["gridlike = gridlike.cli:main"]},
)
